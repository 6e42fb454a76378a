"""A live ``tempering serve`` for the tests that are about exactly that (the OpenAI SDK, the portal in a browser,
usage over HTTP, workers and restarts): a free loopback port, a home with a model registered, the server
started, the secret its first start prints read from its stderr once it accepts connections, and stopped.

The fixtures stay in their test modules, with their own scopes; they share these helpers.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tempering.settings import reset_settings

KEY = r"(tk-\S+)"  # the admin API key
ADMIN_PASSWORD = r"admin user 'admin' with the password .*: (\S+)"  # noqa: S105 - the line that prints it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_model(home: Path, model_id: str, folder: Path) -> None:
    """Register ``folder`` as ``model_id`` in ``home`` (``models add-path``'s code), leaving this process's
    settings as they were."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPERING_HOME", str(home))
        reset_settings()
        from tempering.catalog import register_local_path

        register_local_path(model_id, folder)
    reset_settings()


def wait_until_serving(process: subprocess.Popen, port: int, secret: str = KEY, timeout: float = 60) -> str | None:
    """The last match of ``secret``'s group in what the server printed on its first start (None on later starts,
    which print none), once it accepts connections; its stderr is drained in the background all along (the
    secret is printed before the server binds its port, so it has been read once a connection succeeds).
    A server that exits or never accepts connections fails the test (and is not left behind)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {''.join(lines)[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.1)
            continue
        time.sleep(0.2)  # the secret's line, written before the bind, reaches the reader
        found = [m.group(1) for m in (re.search(secret, line) for line in lines) if m]
        return found[-1] if found else None
    process.kill()  # never leave a server behind a failed start
    raise AssertionError("the server never accepted connections")


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_serving(env: dict, port: int, *args: str) -> subprocess.Popen:
    """``tempering serve --port PORT *args`` with ``env``; its stderr piped for ``wait_until_serving``."""
    return subprocess.Popen([sys.executable, "-m", "tempering.cli.main", "serve", "--port", str(port), *args],  # noqa: S603 - our own CLI, fixed arguments
                            env=env, stderr=subprocess.PIPE, text=True)


def start_worker(env: dict) -> subprocess.Popen:
    """``tempering worker`` with ``env`` (its output thrown away)."""
    return subprocess.Popen([sys.executable, "-m", "tempering.cli.main", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def live_server(home: Path, *, env: dict | None = None, secret: str = KEY,
                timeout: float = 60) -> Iterator[tuple[str, str | None]]:
    """``tempering serve`` (one worker, 10 s leases unless ``env`` says otherwise) over ``home`` on a free port:
    yields its base URL (``http://127.0.0.1:PORT``) and the secret its first start printed (see
    ``wait_until_serving``); stopped on the way out, however the test ended."""
    port = free_port()
    env = {**os.environ, "TEMPERING_HOME": str(home), "TEMPERING_WORKER_LEASE_SECONDS": "10", **(env or {})}
    process = start_serving(env, port)
    try:
        yield f"http://127.0.0.1:{port}", wait_until_serving(process, port, secret, timeout)
    finally:
        stop(process)
