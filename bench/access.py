"""What authentication, the permission check and rate limiting cost per request (issue 13).

    python bench/access.py [--requests 3000] [--redis]

Starts a server (the real ``create_app``, uvicorn, one process, no job workers) in a temp home, with two extra
routes that do nothing: ``GET /bench/noop`` (public: no key looked up, no permission decided) and
``GET /v1/bench/noop`` (an API key checked by the request guard, the caller's role read, the route's action
allowed by ``api.permissions.authorize``: everything every /v1 route pays). Both pass through the same
middleware, so the difference of their median latencies, measured alternately over one keep-alive connection,
is what access control adds per request. Rate limiting is measured in the same run as the per-request cost of
the limiter the serving routes call (``services.ratelimits``: a deployment's requests and tokens per minute
admitted up front and settled after, ``limits`` with in-process storage, and with ``--redis`` a
``redis-server`` this script starts on a free port).

Prints a table: what | median | p90 (microseconds), and the overheads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def serve(port: int) -> None:
    """The child process: the real app plus the two no-op routes."""
    import uvicorn

    from tempering.api import permissions
    from tempering.api.app import create_app
    from tempering.services.access import PUBLIC
    from tempering.settings import get_settings

    app = create_app(get_settings(), workers=0)
    permissions.ROUTES[("GET", "/bench/noop")] = PUBLIC
    permissions.ROUTES[("GET", "/v1/bench/noop")] = "project.read"
    app.add_api_route("/bench/noop", lambda: {"ok": True}, methods=["GET"])
    app.add_api_route("/v1/bench/noop", lambda: {"ok": True}, methods=["GET"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    env = {**os.environ, "TEMPERING_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], env=env, stderr=subprocess.PIPE,
                               text=True)
    key = None
    for line in process.stderr:
        if "API key" in line:
            key = line.rsplit(":", 1)[1].strip()
            break
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{base}/health", timeout=1)
            return process, base, key
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def time_requests(base: str, key: str, n: int) -> dict[str, list[float]]:
    samples = {"public": [], "authenticated": []}
    with httpx.Client(base_url=base) as client:
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(200):  # warm up both paths (imports, caches, the connection)
            client.get("/bench/noop")
            client.get("/v1/bench/noop", headers=headers)
        for _ in range(n):
            for name, path, h in (("public", "/bench/noop", {}), ("authenticated", "/v1/bench/noop", headers)):
                start = time.perf_counter()
                response = client.get(path, headers=h)
                samples[name].append((time.perf_counter() - start) * 1e6)
                assert response.status_code == 200, response.text
    return samples


def time_limiter(url: str, n: int) -> list[float]:
    """One serving request's limiter work, as the chat service does it (``services.ratelimits``): admitted
    against the deployment's requests and tokens per minute, then settled with the tokens it really used."""
    from tempering.services.ratelimits import DeploymentLimiter

    limiter = DeploymentLimiter(url)
    out = []
    for _ in range(n):
        start = time.perf_counter()
        limiter.admit("deploy-bench", "bench", 10**9, 10**12, 300)
        limiter.settle("deploy-bench", 10**9, 10**12, 300, 120)
        out.append((time.perf_counter() - start) * 1e6)
    return out


def start_redis() -> tuple[subprocess.Popen, str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}"


def row(name: str, values: list[float]) -> str:
    values = sorted(values)
    return f"| {name:<44} | {statistics.median(values):>9.0f} | {values[int(len(values) * 0.9)]:>9.0f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--redis", action="store_true", help="also time the limiter on a redis-server")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    home = Path(tempfile.mkdtemp(prefix="bench-access-"))
    process, base, key = start_server(home / "home")
    try:
        samples = time_requests(base, key, args.requests)
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    limiter = {"in-process": time_limiter("memory://", args.requests)}
    if args.redis and (redis := start_redis()):
        try:
            limiter["redis"] = time_limiter(redis[1], args.requests)
        finally:
            redis[0].terminate()
    print(f"{args.requests} requests each, alternating, one keep-alive connection, microseconds")
    print("| what                                         |    median |       p90 |")
    print("|----------------------------------------------|-----------|-----------|")
    print(row("GET /bench/noop (public)", samples["public"]))
    print(row("GET /v1/bench/noop (key + permission)", samples["authenticated"]))
    for name, values in limiter.items():
        print(row(f"rate limiter, admit + settle ({name})", values))
    auth = statistics.median(samples["authenticated"]) - statistics.median(samples["public"])
    print(f"authentication + permission check: {auth:.0f} us per request (median difference)")
    for name, values in limiter.items():
        print(f"authentication + permission + rate limiting ({name}): {auth + statistics.median(values):.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
