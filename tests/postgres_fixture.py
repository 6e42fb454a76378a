"""A throwaway PostgreSQL server for the tests, from the Debian packages (``apt-get install postgresql``).

Import ``postgres_server_fixture`` and ``postgres_url_fixture`` into a test module to use them.
``postgres_server`` (session scope) runs ``initdb`` in a temp folder and starts the cluster on a free
loopback port with its socket in that folder, so it never touches a system cluster; it is stopped and
deleted at the end. ``postgres_url`` (per test) creates a fresh database and yields its SQLAlchemy URL
(``postgresql+psycopg://…``). PostgreSQL refuses to run as root: as root the cluster runs as the
``postgres`` user the Debian package creates (or ``nobody``). Without the binaries the tests are skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 60


def _bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl`` (or $PG_BINDIR)."""
    candidates = [os.environ["PG_BINDIR"]] if os.environ.get("PG_BINDIR") else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass
class PostgresServer:
    bin_dir: Path
    folder: Path
    port: int
    user: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def run(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "HOME": str(self.folder)}
        result = subprocess.run([str(self.bin_dir / args[0]), *map(str, args[1:])], env=env, cwd=self.folder,
                                capture_output=True, text=True, timeout=START_TIMEOUT, check=False, **kwargs)
        if check and result.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr}{result.stdout}\n{tail}")
        return result

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin_connection(self):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                               autocommit=True)


def start_server() -> PostgresServer:
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                    "(apt-get install postgresql)")
    user = _run_as()
    # In /tmp, not pytest's tmp folder: as root that is mode 0700, which the server's user cannot enter, and
    # a long path would overflow the unix socket's ~107-byte limit.
    folder = Path(tempfile.mkdtemp(prefix="tempering-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    server = PostgresServer(bin_dir, folder, _free_port(), user)
    try:
        server.run("initdb", "-D", server.data, "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                   "--locale=C", "--no-sync", "--no-instructions")
        options = (f"-p {server.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        server.run("pg_ctl", "-D", server.data, "-l", folder / "server.log", "-o", options, "-w",
                   "-t", START_TIMEOUT, "start")
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: PostgresServer) -> None:
    if (server.data / "postmaster.pid").exists():
        server.run("pg_ctl", "-D", server.data, "-m", "immediate", "-w", "stop", check=False)
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="session", name="postgres_server")
def postgres_server_fixture():
    pytest.importorskip("psycopg")
    server = start_server()
    yield server
    stop_server(server)


@pytest.fixture(name="postgres_url")
def postgres_url_fixture(postgres_server):
    """A fresh, empty database on the throwaway server; its SQLAlchemy URL."""
    name = "t_" + secrets.token_hex(6)
    with postgres_server.admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.url(name)
    with postgres_server.admin_connection() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
