"""A regression test per hole class of the hardening issue, and a corpus of bad requests through the API.

Two servers per module: an in-process app (``TestClient``) for the rules (ownership, references, upstream
allowlist, job and deployment checks, metrics), and one live ``tempering serve`` for what only a real
socket shows (bodies refused from their headers, a client that goes away, 429s) and for the corpus. The
live server's TMPDIR is an empty folder that must stay empty: nothing is written outside the home.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time

import httpx
import pytest
from conftest import TINY_ID, chat_example
from live_server import free_port
from test_api import _jsonl
from test_deployments import _register_tiny, _start

from tempering.settings import Settings, reset_settings

TRAIN = _jsonl([chat_example(f"What color is item {i}?", f"Item {i} is red.") for i in range(12)])
UPLOAD_LIMIT = 10_000_000
RUN_ID = "runofa01"
A_MODEL = f"ft:{TINY_ID}:a:{RUN_ID}"
A_CHECKPOINTS = [f"{A_MODEL}@step-5", f"{A_MODEL}@step-000005", f"{A_MODEL}:ckpt-step-5"]
SCRAPE_TOKEN = "scrape-token"  # noqa: S105 (a test value)
SECRET = "UPSTREAM-PRIVATE-BODY"  # noqa: S105 (a marker, not a password)


# ---------------------------------------------------------------- a fake upstream


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Answers ``/v1/completions`` badly: a 500 with a body, or a 200 whose stream is not JSON."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        status = 500 if "fails" in self.path or self.server.mode == "fails" else 200
        body = f"data: {{{SECRET} not json\n\n".encode() if status == 200 else f"Traceback {SECRET}".encode()
        self.send_response(status)
        self.send_header("content-type", "text/event-stream" if status == 200 else "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.mode = "garbage"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


# ---------------------------------------------------------------- the in-process app


def _fake_running_checkpoint(home) -> None:
    """Project A's running job with one complete checkpoint on disk (as a worker leaves it mid-run)."""
    run = home / "runs" / RUN_ID
    step = run / "checkpoints" / "step-000005"
    step.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base_model": TINY_ID, "config": {"suffix": "a"},
                                              "status": "running"}))
    (step / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (step / "COMPLETE").write_text("")


@pytest.fixture(scope="module")
def inproc(tiny_model_dir, tmp_path_factory, upstream):
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.services.projects import project_key
    from tempering.store.models import Job, Project

    home = tmp_path_factory.mktemp("hardening-inproc")
    _register_tiny(home, tiny_model_dir)
    settings = Settings(home=home, upstream_allowed_urls=[f"http://127.0.0.1:{upstream.server_port}/v1"],
                        metrics_token=SCRAPE_TOKEN, serve_max_concurrent_requests=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPERING_HOME", str(home))
        reset_settings()
        app = create_app(settings, workers=0)
        a_key = app.state.initial_api_key
        client = TestClient(app)
        a_file = client.post("/v1/files", headers={"Authorization": f"Bearer {a_key}"},
                             files={"file": ("a.jsonl", TRAIN)}, data={"purpose": "fine-tune"}).json()["id"]
        with app.state.db.session() as session:
            a_project = session.query(Project).one().id
            b = Project(name="b")
            session.add(b)
            session.flush()
            b_key = project_key(session, b.id, "b")
            session.add(Job(id=f"ftjob-{RUN_ID}", project_id=a_project, model=TINY_ID, training_file=a_file,
                            suffix="a", seed=1, config={}, status="running"))
        _fake_running_checkpoint(home)
    reset_settings()
    yield {"app": app, "home": home, "a": {"Authorization": f"Bearer {a_key}"},
           "b": {"Authorization": f"Bearer {b_key}"}, "a_file": a_file, "upstream": upstream}


@pytest.fixture
def api(inproc, monkeypatch):
    """The in-process app, with this test's settings pointing at its home (refs resolve through them)."""
    from fastapi.testclient import TestClient

    monkeypatch.setenv("TEMPERING_HOME", str(inproc["home"]))
    reset_settings()
    return {**inproc, "client": TestClient(inproc["app"])}


def _b_file(api) -> str:
    uploaded = api["client"].post("/v1/files", headers=api["b"], files={"file": ("b.jsonl", TRAIN)},
                                  data={"purpose": "fine-tune"})
    assert uploaded.status_code == 200, uploaded.text
    return uploaded.json()["id"]


def _model_uses(file_id: str, model: str) -> list[tuple[str, dict]]:
    """Every route that takes a model reference: deploy, evaluate, export, continue training."""
    return [("/v1/deployments", {"model": model, "name": "stolen"}),
            ("/v1/evaluations", {"model": model, "data_file": file_id}),
            ("/v1/exports", {"model": model, "format": "peft"}),
            ("/v1/fine_tuning/jobs", {"model": model, "training_file": file_id})]


# ---------------------------------------------------------------- hole 1: ownership


@pytest.mark.parametrize("checkpoint", A_CHECKPOINTS)
def test_hole1_a_running_jobs_checkpoint_is_not_another_projects(api, checkpoint):
    client, b_file = api["client"], _b_file(api)
    for path, body in _model_uses(b_file, checkpoint):
        response = client.post(path, headers=api["b"], json=body)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["param"] == "model"
    # the checkpoint is real: its own project deploys it
    mine = client.post("/v1/deployments", headers=api["a"], json={"model": checkpoint, "name": "mine"})
    assert mine.status_code == 200, mine.text
    assert client.delete(f"/v1/deployments/{mine.json()['id']}", headers=api["a"]).status_code == 200


# ---------------------------------------------------------------- hole 2: references are ids, never paths


def _path_names(home) -> list[tuple[str, str]]:
    """(existing folder, missing folder) pairs in every spelling of a path."""
    return [(str(home / "runs"), str(home / "nothing")),
            (str(home / "runs" / RUN_ID / "checkpoints" / "step-000005"), str(home / "runs" / "x" / "step-1")),
            ("/etc", "/etc-not-there"), ("../..", "../../nothing-here"), ("./runs", "./nothing"),
            (f"runs/{RUN_ID}", "runs/missing"), (f"ft:{TINY_ID}:a:../{RUN_ID}@step-5", f"ft:{TINY_ID}:a:../x@step-5"),
            (f"ft:{TINY_ID}:a:{RUN_ID}/checkpoints@step-5", f"ft:{TINY_ID}:a:x/y@step-5"), ("~", "~nobody-here")]


def test_hole2_model_references_are_never_paths(api):
    client, home = api["client"], str(api["home"])
    for existing, missing in _path_names(api["home"]):
        for path, body in _model_uses(api["a_file"], existing):
            answers = []
            for name in (existing, missing):
                response = client.post(path, headers=api["a"], json={**body, "model": name})
                assert response.status_code == 404, (path, name, response.text)
                error = response.json()["error"]
                assert error["param"] == "model"
                shown = error["message"].replace(name[:240], "NAME")
                assert home not in shown and "/etc" not in shown, shown
                answers.append(shown)
            assert answers[0] == answers[1], (path, existing, answers)


# ---------------------------------------------------------------- hole 3: upstream allowlist, generic 502


@pytest.fixture
def no_connections(monkeypatch):
    """Any connection attempt (or name lookup) fails the test."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_hole3_upstreams_off_the_allowlist_are_refused_before_connecting(api, no_connections):
    port = api["upstream"].server_port
    refused = ["http://169.254.169.254/latest/meta-data", "http://169.254.169.254/v1",
               f"http://127.0.0.1:{port + 1}/v1", f"http://user:secret@127.0.0.1:{port}/v1",
               f"http://127.0.0.1:{port}@169.254.169.254/v1", f"http://127.0.0.1:{port}\\@169.254.169.254/v1",
               f"http:\\\\127.0.0.1:{port}\\v1", "file:///etc/passwd", "gopher://127.0.0.1:70/_x",
               f"ftp://127.0.0.1:{port}/v1", f"http://localhost:{port}/v1", f"http://[::1]:{port}/v1",
               f"http://127.0.0.1:{port}/v1/../../admin", f"HTTP://127.0.0.1:{port}/v1?x=http://169.254.169.254"]
    for url in refused:
        response = api["client"].post("/v1/deployments", headers=api["a"], json={
            "model": TINY_ID, "name": "up", "backend": "upstream", "upstream_url": url})
        assert response.status_code in (400, 403), (url, response.text)
        assert response.json()["error"]["param"] == "upstream_url", url
    assert not no_connections


@pytest.mark.parametrize("mode", ["garbage", "fails"])
def test_hole3_a_bad_upstream_reply_is_a_generic_502(api, mode):
    api["upstream"].mode = mode
    client, port = api["client"], api["upstream"].server_port
    name = f"up-{mode}"
    made = client.post("/v1/deployments", headers=api["a"], json={
        "model": TINY_ID, "name": name, "backend": "upstream", "upstream_url": f"http://127.0.0.1:{port}/v1"})
    assert made.status_code == 200, made.text
    for stream in (False, True):
        response = client.post("/v1/chat/completions", headers=api["a"], json={
            "model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": stream})
        text = response.text
        assert SECRET not in text and "127.0.0.1" not in text and str(port) not in text, text
        if not stream:
            assert response.status_code == 502, text
            assert response.json()["error"]["code"] == "upstream_error"
        else:
            assert response.status_code == 502 or "upstream_error" in text, text
    client.delete(f"/v1/deployments/{made.json()['id']}", headers=api["a"])


def _asgi_call(app, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    """Call the app with a body that raises if anything reads it; (status, error)."""
    import asyncio

    async def receive():
        raise AssertionError("the body was read")

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)["error"]


def test_hole5_refusals_from_headers_never_touch_the_body(api):
    app, key = api["app"], api["a"]["Authorization"]
    form = {"content-type": "multipart/form-data; boundary=x", "content-length": "40000000"}
    assert _asgi_call(app, "/v1/files", form)[0] == 401
    assert _asgi_call(app, "/v1/files", {**form, "authorization": "Bearer tk-nope"})[0] == 401
    huge = {**form, "content-length": str(600 * 2**20), "authorization": key}  # over the 512 MB default
    assert _asgi_call(app, "/v1/files", huge) == (413, {
        "message": "the upload is larger than the 536,870,912-byte limit", "type": "invalid_request_error",
        "param": "file", "code": "file_too_large"})
    chat = {"content-type": "application/json", "content-length": "10000000"}
    assert _asgi_call(app, "/v1/chat/completions", chat)[0] == 401
    status, error = _asgi_call(app, "/v1/chat/completions", {**chat, "authorization": key})
    assert status == 413 and error["code"] == "request_too_large"


# ---------------------------------------------------------------- the smaller holes


def test_a_file_a_queued_job_reads_cannot_be_deleted(api):
    client = api["client"]
    file_id = _b_file(api)
    job = client.post("/v1/fine_tuning/jobs", headers=api["b"], json={"model": TINY_ID, "training_file": file_id})
    assert job.status_code == 200, job.text
    refused = client.delete(f"/v1/files/{file_id}", headers=api["b"])
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "file_in_use", refused.text
    assert client.get(f"/v1/files/{file_id}/content", headers=api["b"]).content == TRAIN
    client.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel", headers=api["b"])


@pytest.mark.parametrize("body,param", [
    ({"hyperparameters": {"n_epochs": 2},
      "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}}, "hyperparameters"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": True}}}}, "n_epochs"),
    ({"hyperparameters": {"n_epochs": False}}, "n_epochs"),
])
def test_job_config_conflicts_and_boolean_epochs(api, body, param):
    response = api["client"].post("/v1/fine_tuning/jobs", headers=api["a"],
                                  json={"model": TINY_ID, "training_file": api["a_file"], **body})
    assert response.status_code == 400, response.text
    assert param in (response.json()["error"]["param"] or "") + response.json()["error"]["message"]


def test_max_concurrent_requests_is_bounded_by_the_server(api):
    response = api["client"].post("/v1/deployments", headers=api["a"],
                                  json={"model": TINY_ID, "name": "greedy", "max_concurrent_requests": 9})
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_concurrent_requests"


# ---------------------------------------------------------------- /metrics


def _record(monitor, deployment: str) -> None:
    from tempering.services.monitoring import RequestRecord

    monitor.record(RequestRecord(deployment_id=deployment, created_at=time.time(), endpoint="chat.completions",
                                 adapter=None, stream=False, status=200, error_code=None, latency_ms=12.0,
                                 ttft_ms=3.0, prompt_tokens=5, completion_tokens=7))


def test_metrics_need_the_scrape_token_when_one_is_set(api):
    client = api["client"]
    _record(api["app"].state.monitor, "dep-tokened")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=api["a"]).status_code == 401  # an API key is not the scrape token
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-tokenX"}).status_code == 401
    full = client.get("/metrics", headers={"Authorization": "Bearer scrape-token"})
    assert full.status_code == 200 and 'deployment="dep-tokened"' in full.text


def test_metrics_without_a_token_are_aggregates_only():
    from prometheus_client import generate_latest

    from tempering.services.monitoring import Monitor

    class NoServing:
        def __init__(self):
            self.engines = {}

    monitor = Monitor(None, NoServing())
    monitor._queue.put = lambda record: None  # no database behind this one
    for deployment in ("dep-one", "dep-two", "dep-two"):
        _record(monitor, deployment)
    del monitor._queue.put
    text = generate_latest(monitor.aggregate()).decode()
    assert "dep-one" not in text and "dep-two" not in text and "deployment=" not in text
    assert 'tempering_requests_total{endpoint="chat.completions",status="200"} 3.0' in text
    assert 'tempering_tokens_total{kind="completion"} 21.0' in text
    assert 'tempering_request_latency_seconds_count{endpoint="chat.completions"} 3.0' in text
    monitor.close()


# ---------------------------------------------------------------- the live server


@pytest.fixture(scope="module")
def live(tiny_model_dir, tmp_path_factory):
    """A live server (no job workers) whose TMPDIR is an empty folder, with a base deployment that serves
    one request at a time."""
    home = tmp_path_factory.mktemp("hardening-live")
    tmpdir = tmp_path_factory.mktemp("hardening-tmpdir")
    _register_tiny(home, tiny_model_dir)
    port = free_port()
    process, key = _start(home, port, {"TMPDIR": str(tmpdir), "TEMP": str(tmpdir), "TMP": str(tmpdir),
                                       "TEMPERING_SERVER_WORKERS": "0",
                                       "TEMPERING_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)})
    http_client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                               timeout=60)
    # the content filter is not what these tests are about (tests/test_safety_serving.py is)
    made = http_client.post("/v1/deployments", json={"model": TINY_ID, "name": "one", "content_filter": False,
                                                     "max_concurrent_requests": 1})
    assert made.status_code == 200, made.text
    yield {"http": http_client, "port": port, "key": key, "home": home, "tmpdir": tmpdir, "process": process}
    process.terminate()
    process.wait(timeout=30)


def _raw(port: int, head: str, body: bytes = b"", wait: float = 5.0) -> int | None:
    """Send a request's head (and part of its body, maybe), then read the status line; None when the server
    answers nothing within ``wait`` (it is waiting for the rest of the body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            return None
    return int(data.split(b" ")[1]) if data.startswith(b"HTTP/") else None


def _head(path: str, length: int, key: str | None = None, content_type: str = "application/json") -> str:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n{auth}")


MULTIPART = "multipart/form-data; boundary=xyz"
PART = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n' + b"x" * 1000


def test_hole5_an_upload_without_a_key_is_refused_before_its_body(live):
    # 40 MB declared, 1 KB sent: the answer comes from the headers, the rest of the body is never awaited
    assert _raw(live["port"], _head("/v1/files", 40_000_000, None, MULTIPART), PART) == 401
    assert _raw(live["port"], _head("/v1/files", 40_000_000, "tk-wrong", MULTIPART), PART) == 401


def test_hole5_a_declared_oversize_upload_is_refused_from_its_headers(live):
    assert _raw(live["port"], _head("/v1/files", UPLOAD_LIMIT + 10_000_000, live["key"], MULTIPART), PART) == 413


def test_hole5_json_bodies_are_capped_and_unauthenticated_ones_unread(live):
    port, key = live["port"], live["key"]
    assert _raw(port, _head("/v1/chat/completions", 10_000_000, key), b'{"model": "one", ') == 413
    assert _raw(port, _head("/v1/chat/completions", 1000, None), b'{"model": ') == 401  # body never read
    assert _raw(port, _head("/v1/fine_tuning/jobs", 1000, "tk-nope"), b"") == 401

    def endless():  # chunked, no length: counted as it arrives, cut off at the cap
        for _ in range(2000):
            yield b" " * 10_000

    response = live["http"].post("/v1/chat/completions", content=endless(),
                                 headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_hole5_a_chunked_oversize_upload_stops_at_the_limit_and_leaves_nothing(live):
    files_folder = live["home"] / "artifacts" / "files"
    before = set(os.listdir(files_folder))

    def body():
        yield PART
        for _ in range(UPLOAD_LIMIT // 10_000 + 100):
            yield b"y" * 10_000

    response = live["http"].post("/v1/files", content=body(), headers={"Content-Type": MULTIPART})
    assert response.status_code == 413 and response.json()["error"]["param"] == "file", response.text
    assert set(os.listdir(files_folder)) == before
    assert os.listdir(live["tmpdir"]) == []


def test_hole5_uploads_stream_into_the_home_only(live):
    uploaded = live["http"].post("/v1/files", files={"file": ("ok.jsonl", TRAIN)}, data={"purpose": "fine-tune"})
    assert uploaded.status_code == 200, uploaded.text
    assert (live["home"] / "artifacts" / "files" / uploaded.json()["id"]).read_bytes() == TRAIN
    assert os.listdir(live["tmpdir"]) == []


def _log(live, status: int) -> list[dict]:
    rows = live["http"].get("/v1/deployments/one/requests", params={"limit": 50}).json()["data"]
    return [r for r in rows if r["status"] == status]


def _gauge(live, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{live['port']}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _wait_until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


LONG = {"model": "one", "messages": [{"role": "user", "content": "Tell me everything."}], "max_tokens": 900,
        "n": 4, "temperature": 1.0, "seed": 3}


def test_hole6_and_7_a_client_that_leaves_frees_its_slot_and_429s_are_logged(live):
    warm = live["http"].post("/v1/chat/completions", json={**LONG, "max_tokens": 1, "n": 1})  # loads the engine
    assert warm.status_code == 200, warm.text
    body = json.dumps(LONG).encode()
    with socket.create_connection(("127.0.0.1", live["port"]), timeout=30) as s:
        s.sendall(_head("/v1/chat/completions", len(body), live["key"]).encode() + b"\r\n" + body)
        if not _wait_until(lambda: _gauge(live, "tempering_engine_active_sequences") >= 1):
            s.settimeout(2)
            raise AssertionError(f"the long request never started; it got {s.recv(2000)!r}")
        busy = live["http"].post("/v1/chat/completions", json={**LONG, "max_tokens": 1, "n": 1})
        assert busy.status_code == 429 and busy.headers.get("Retry-After"), busy.text
    # the socket is closed: the generation stops, its slot is free, the request log says 499
    assert _wait_until(lambda: _gauge(live, "tempering_engine_active_sequences") == 0, 5)
    assert _gauge(live, "tempering_engine_queued_requests") == 0
    assert _wait_until(lambda: bool(_log(live, 499)), 5), "no 499 in the request log"
    assert _log(live, 499)[0]["completion_tokens"] < LONG["max_tokens"]
    assert _log(live, 429), "the 429 is not in the request log"
    again = live["http"].post("/v1/chat/completions", json={**LONG, "max_tokens": 2})
    assert again.status_code == 200, again.text


def test_hole7_token_ids_outside_the_vocabulary_are_refused(live):
    for prompt in ([1, 2, 10**9], [-1], [[5, 99_999_999]]):
        response = live["http"].post("/v1/completions", json={"model": "one", "prompt": prompt, "max_tokens": 2})
        assert response.status_code == 400, (prompt, response.text)
        assert response.json()["error"]["param"].startswith("prompt")


# ---------------------------------------------------------------- the bad-request corpus


def _chat(**fields) -> dict:
    return {"model": "one", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


def _upload(data: bytes, filename: str = "bad.jsonl", purpose: str = "fine-tune") -> dict:
    return {"files": {"file": (filename, data)}, "data": {"purpose": purpose}}


def _lines(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


GOOD_ROW = chat_example("q", "a")
DEEP = b"[" * 5000 + b"]" * 5000

# (name, method, path, request kwargs, status, param: None only where the whole body is at fault);
# "{file}" stands for a processed file
CORPUS = [
    # uploads: bad data, named by line
    ("upload-not-json", "POST", "/v1/files", _upload(_lines(*[GOOD_ROW] * 11, b"{not json")), 400, "file"),
    ("upload-latin1", "POST", "/v1/files", _upload(_lines(*[GOOD_ROW] * 11) + "caf\xe9\n".encode("latin-1")),
     400, "file"),
    ("upload-utf16", "POST", "/v1/files", _upload(_lines(*[GOOD_ROW] * 12).decode().encode("utf-16")), 400, "file"),
    ("upload-binary", "POST", "/v1/files", _upload(bytes(range(256)) * 64), 400, "file"),
    ("upload-nul-bytes", "POST", "/v1/files", _upload(b"\x00" * 5000), 400, "file"),
    ("upload-deep-nesting", "POST", "/v1/files", _upload(_lines(*[GOOD_ROW] * 11) + DEEP + b"\n"), 400, "file"),
    ("upload-huge-line", "POST", "/v1/files", _upload(_lines(*[GOOD_ROW] * 11) + b'{"messages": "' + b"a" * (9 << 20) + b'"}\n'),
     400, "file"),
    ("upload-empty", "POST", "/v1/files", _upload(b""), 400, "file"),
    ("upload-too-few", "POST", "/v1/files", _upload(_lines(GOOD_ROW)), 400, "file"),
    ("upload-wrong-roles", "POST", "/v1/files",
     _upload(_lines(*[{"messages": [{"role": "wizard", "content": "x"}]}] * 12)), 400, "file"),
    ("upload-nan", "POST", "/v1/files", _upload(_lines(*[GOOD_ROW] * 11, b'{"messages": NaN}')), 400, "file"),
    ("upload-oversize", "POST", "/v1/files", _upload(b"x" * (UPLOAD_LIMIT + 1)), 413, "file"),
    # uploads: bad forms and names
    ("upload-bad-purpose", "POST", "/v1/files", _upload(TRAIN, purpose="fine-tune-results"), 400, "purpose"),
    ("upload-purpose-huge", "POST", "/v1/files", _upload(TRAIN, purpose="p" * 5000), 400, "purpose"),
    ("upload-no-purpose", "POST", "/v1/files", {"files": {"file": ("a.jsonl", TRAIN)}}, 400, "purpose"),
    ("upload-no-file", "POST", "/v1/files", {"files": {"purpose": (None, b"fine-tune")}}, 400, "file"),
    ("upload-two-files", "POST", "/v1/files", {"files": [("file", ("a.jsonl", TRAIN)), ("file", ("b.jsonl", TRAIN))],
                                                "data": {"purpose": "fine-tune"}}, 400, "file"),
    ("upload-long-filename", "POST", "/v1/files", _upload(TRAIN, filename="a" * 2000), 400, "file"),
    ("upload-not-multipart", "POST", "/v1/files", {"content": TRAIN, "headers": {"Content-Type": "text/plain"}},
     400, "file"),
    ("upload-no-boundary", "POST", "/v1/files",
     {"content": TRAIN, "headers": {"Content-Type": "multipart/form-data"}}, 400, "file"),
    ("upload-truncated-form", "POST", "/v1/files", {"content": PART, "headers": {"Content-Type": MULTIPART}},
     400, "file"),
    ("upload-garbage-form", "POST", "/v1/files",
     {"content": b"--xyz\r\nno headers here\r\n\r\n", "headers": {"Content-Type": MULTIPART}}, 400, "file"),
    # path-like filenames are stored as metadata: refused for their data here, never written as paths
    ("upload-path-filename", "POST", "/v1/files", _upload(b"\x00\x01", filename="../../etc/passwd"), 400, "file"),
    ("upload-abs-filename", "POST", "/v1/files", _upload(b"{", filename="/srv/evil.jsonl"), 400, "file"),
    # jobs: conflicting fields, out-of-range numbers, wrong types, odd ids
    ("job-method-and-top", "POST", "/v1/fine_tuning/jobs", {"json": {
        "model": TINY_ID, "training_file": "{file}", "hyperparameters": {"n_epochs": 1},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}}}, 400, "hyperparameters"),
    ("job-bool-epochs", "POST", "/v1/fine_tuning/jobs",
     {"json": {"model": TINY_ID, "training_file": "{file}", "hyperparameters": {"n_epochs": True}}}, 400,
     "hyperparameters.n_epochs"),
    ("job-negative-epochs", "POST", "/v1/fine_tuning/jobs",
     {"json": {"model": TINY_ID, "training_file": "{file}", "hyperparameters": {"n_epochs": -3}}}, 400,
     "hyperparameters.n_epochs"),
    ("job-huge-lr", "POST", "/v1/fine_tuning/jobs", {"json": {
        "model": TINY_ID, "training_file": "{file}", "hyperparameters": {"learning_rate_multiplier": 1e300}}},
     400, "hyperparameters.learning_rate_multiplier"),
    ("job-string-batch", "POST", "/v1/fine_tuning/jobs",
     {"json": {"model": TINY_ID, "training_file": "{file}", "hyperparameters": {"batch_size": "many"}}}, 400,
     "hyperparameters.batch_size"),
    ("job-missing-file", "POST", "/v1/fine_tuning/jobs", {"json": {"model": TINY_ID}}, 400, "training_file"),
    ("job-odd-file-id", "POST", "/v1/fine_tuning/jobs",
     {"json": {"model": TINY_ID, "training_file": "../../etc/passwd"}}, 404, "training_file"),
    ("job-path-model", "POST", "/v1/fine_tuning/jobs", {"json": {"model": "/etc", "training_file": "{file}"}},
     404, "model"),
    ("job-seed-overflow", "POST", "/v1/fine_tuning/jobs",
     {"json": {"model": TINY_ID, "training_file": "{file}", "seed": 2**80}}, 400, "seed"),
    ("job-not-json", "POST", "/v1/fine_tuning/jobs",
     {"content": b"{model:", "headers": {"Content-Type": "application/json"}}, 400, None),
    ("job-array-body", "POST", "/v1/fine_tuning/jobs", {"json": [1, 2, 3]}, 400, None),
    ("job-odd-id", "GET", "/v1/fine_tuning/jobs/ftjob-..%5C..%5Cetc", {}, 404, "fine_tuning_job_id"),
    ("job-cancel-odd-id", "POST", "/v1/fine_tuning/jobs/" + "9" * 300 + "/cancel", {}, 404, "fine_tuning_job_id"),
    # chat: wrong types, out-of-range numbers, oversize bodies
    ("chat-temperature", "POST", "/v1/chat/completions", {"json": _chat(temperature=99)}, 400, "temperature"),
    ("chat-max-tokens", "POST", "/v1/chat/completions", {"json": _chat(max_tokens=-1)}, 400, "max_tokens"),
    ("chat-top-p-string", "POST", "/v1/chat/completions", {"json": _chat(top_p="high")}, 400, "top_p"),
    ("chat-messages-dict", "POST", "/v1/chat/completions", {"json": _chat(messages={"role": "user"})}, 400,
     "messages"),
    ("chat-no-model", "POST", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "x"}]}},
     400, "model"),
    ("chat-unknown-model", "POST", "/v1/chat/completions", {"json": _chat(model="../../etc")}, 404, "model"),
    ("chat-oversize", "POST", "/v1/chat/completions",
     {"json": _chat(messages=[{"role": "user", "content": "x" * 10_000_000}])}, 413, None),
    ("completion-bad-token", "POST", "/v1/completions", {"json": {"model": "one", "prompt": [10**12]}}, 400,
     "prompt"),
    # deployments and files: odd ids and values
    ("deploy-path-model", "POST", "/v1/deployments", {"json": {"model": "./runs", "name": "p"}}, 404, "model"),
    ("deploy-concurrency", "POST", "/v1/deployments",
     {"json": {"model": TINY_ID, "name": "c", "max_concurrent_requests": 100000}}, 400, "max_concurrent_requests"),
    ("deploy-upstream-metadata", "POST", "/v1/deployments", {"json": {
        "model": TINY_ID, "name": "u", "backend": "upstream", "upstream_url": "http://169.254.169.254/v1"}},
     403, "upstream_url"),
    ("file-odd-id", "GET", "/v1/files/file-%00", {}, 404, "file_id"),
    ("file-delete-odd-id", "DELETE", "/v1/files/file-..%5Cartifacts", {}, 404, "file_id"),
    ("deployment-odd-id", "GET", "/v1/deployments/%2E%2E%5Cone", {}, 404, "deployment_id"),
]


# uploads whose problem is on one line: the answer names it
LINE_NAMED = {"upload-not-json": 12, "upload-latin1": 12, "upload-deep-nesting": 12, "upload-huge-line": 12,
              "upload-wrong-roles": 1, "upload-nan": 12}


def test_the_corpus_is_large():
    assert len(CORPUS) >= 40


def _files_on_disk(home) -> set[str]:
    return set(os.listdir(home / "artifacts" / "files"))


@pytest.fixture(scope="module")
def processed_file(live) -> str:
    return live["http"].post("/v1/files", **_upload(TRAIN, "good.jsonl")).json()["id"]


@pytest.mark.parametrize("name,method,path,kwargs,status,param", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_requests_get_a_4xx_naming_the_field(live, processed_file, name, method, path, kwargs, status, param):
    if "json" in kwargs and isinstance(kwargs["json"], dict):
        kwargs = {**kwargs, "json": {k: processed_file if v == "{file}" else v for k, v in kwargs["json"].items()}}
    response = live["http"].request(method, path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error  # None only where the whole body is at fault
    if name in LINE_NAMED:
        assert f"line {LINE_NAMED[name]}:" in error["message"], error["message"]
    # the server is up, wrote nothing outside its home, and kept no file without its row
    assert live["http"].get("/health").status_code == 200
    assert os.listdir(live["tmpdir"]) == []
    listed = {f["id"] for f in live["http"].get("/v1/files").json()["data"]}
    assert _files_on_disk(live["home"]) == listed, "a stored file without its row (or a row without its file)"
