"""Webhooks: registration under the outbound rules, Standard Webhooks signatures checked by a real receiver
(and by the openai SDK's own verifier), retries with backoff, events from deployments and job final states,
the address checked again at send time (DNS rebinding)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from tempering.settings import reset_settings

BASE = "smollm2-135m-instruct"


class Receiver:
    """A real HTTP server on 127.0.0.1: records every request; ``/flaky`` answers 500 twice, then 200;
    ``/down`` always 503; anything else 200."""

    def __init__(self):
        self.requests: list[dict] = []
        self.flaky_left = 2
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body,
                                          "at": time.monotonic()})
                code = 200
                if self.path == "/down":
                    code = 503
                elif self.path == "/flaky" and receiver.flaky_left > 0:
                    receiver.flaky_left -= 1
                    code = 500
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, path: str | None = None, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.requests if path is None or r["path"] == path]
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{len(found)} of {count} requests to {path} arrived: {self.requests}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture()
def allowed(monkeypatch):
    """The receiver's host allowed, and fast retries."""
    monkeypatch.setenv("TEMPERING_WEBHOOK_ALLOWED_HOSTS", '["127.0.0.1"]')
    monkeypatch.setenv("TEMPERING_WEBHOOK_BACKOFF_SECONDS", "0.2")
    monkeypatch.setenv("TEMPERING_WEBHOOK_POLL_SECONDS", "0.05")
    monkeypatch.setenv("TEMPERING_WEBHOOK_MAX_ATTEMPTS", "3")
    reset_settings()


def _app():
    from tempering.api.app import create_app
    from tempering.settings import get_settings

    return create_app(get_settings(), workers=0)


def _client(app) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Bearer {app.state.initial_api_key}"})


def _hooks(client) -> str:
    return f"/v1/organization/projects/{client.get('/v1/me').json()['project_id']}/webhooks"


def _verify(secret: str, request: dict) -> dict:
    """Standard Webhooks' check, written out: v1,<base64 HMAC-SHA256 of "id.timestamp.body"> keyed with the
    secret's bytes."""
    headers = request["headers"]
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + request["body"]
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    payload = json.loads(request["body"])
    assert payload["id"] == headers["webhook-id"] and payload["object"] == "event"
    return payload


def test_signed_deployment_events_reach_a_real_receiver(allowed, receiver):
    import openai

    app = _app()
    with _client(app) as client:
        hooks = _hooks(client)
        created = client.post(hooks, json={"url": receiver.url("/hook"),
                                           "events": ["deployment.created", "deployment.deleted"]})
        assert created.status_code == 200, created.text
        hook = created.json()
        secret = hook["secret"]
        assert secret.startswith("whsec_")
        assert client.get(f"{hooks}/{hook['id']}").json()["secret"] is None  # shown once
        assert [h["id"] for h in client.get(hooks).json()["data"]] == [hook["id"]]
        deployment = client.post("/v1/deployments", json={"model": BASE, "name": "hooked"})
        assert deployment.status_code == 200, deployment.text
        assert client.delete(f"/v1/deployments/{deployment.json()['id']}").status_code == 200
        arrived = receiver.wait_for(2, "/hook")
        payloads = [_verify(secret, r) for r in arrived]
        assert {p["type"] for p in payloads} == {"deployment.created", "deployment.deleted"}
        assert all(p["data"] == {"id": deployment.json()["id"]} for p in payloads)
        # the openai SDK's own verifier accepts them too
        sdk = openai.OpenAI(api_key="unused", webhook_secret=secret)
        for request in arrived:
            sdk.webhooks.verify_signature(request["body"], request["headers"])
        with pytest.raises(openai.InvalidWebhookSignatureError):
            sdk.webhooks.verify_signature(arrived[0]["body"] + b" ", arrived[0]["headers"])
        log = client.get(f"{hooks}/{hook['id']}/deliveries").json()["data"]
        assert {d["status"] for d in log} == {"succeeded"} and all(d["attempts"] == 1 for d in log)
        assert client.delete(f"{hooks}/{hook['id']}").status_code == 200
        assert client.get(f"{hooks}/{hook['id']}").status_code == 404


def test_failing_receivers_are_retried_with_backoff_then_given_up(allowed, receiver):
    app = _app()
    with _client(app) as client:
        hooks = _hooks(client)
        flaky = client.post(hooks, json={"url": receiver.url("/flaky"), "events": ["deployment.created"]}).json()
        down = client.post(hooks, json={"url": receiver.url("/down"), "events": ["deployment.created"]}).json()
        assert client.post("/v1/deployments", json={"model": BASE}).status_code == 200
        tries = receiver.wait_for(3, "/flaky")
        receiver.wait_for(3, "/down")
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(tries)]
        assert gaps[0] >= 0.2 * 0.9 and gaps[1] >= 0.4 * 0.9, gaps  # 0.2 s, then doubled
        assert len({r["headers"]["webhook-id"] for r in tries}) == 1  # the same event id on every try
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            log = {h["id"]: client.get(f"{hooks}/{h['id']}/deliveries").json()["data"][0] for h in (flaky, down)}
            if all(d["status"] != "pending" for d in log.values()):
                break
            time.sleep(0.05)
        ok, failed = log[flaky["id"]], log[down["id"]]
        assert ok["status"] == "succeeded" and ok["attempts"] == 3
        assert [a["status_code"] for a in ok["attempt_log"]] == [500, 500, 200]
        assert failed["status"] == "failed" and failed["attempts"] == 3 and failed["last_status_code"] == 503
        assert "503" in failed["last_error"]
    time.sleep(0.5)
    assert len([r for r in receiver.requests if r["path"] == "/down"]) == 3  # no fourth try


def test_private_and_plain_http_targets_are_refused_without_the_allowance():
    app = _app()
    with _client(app) as client:
        hooks = _hooks(client)
        for url in ("http://127.0.0.1:9/x", "https://127.0.0.1/x", "https://10.1.2.3/x", "https://[::1]/x",
                    "https://169.254.169.254/latest/meta-data", "https://[::ffff:127.0.0.1]/x",
                    "https://192.168.0.10/x", "https://100.64.0.1/x", "http://93.184.215.14/x",
                    "ftp://93.184.215.14/x", "https://user:pw@93.184.215.14/x", "https://localhost/x"):
            response = client.post(hooks, json={"url": url, "events": ["deployment.created"]})
            assert response.status_code == 400, (url, response.text)
            assert response.json()["error"]["param"] == "url", url
        bad_event = client.post(hooks, json={"url": "https://93.184.215.14/x", "events": ["nope"]})
        assert bad_event.status_code == 400 and bad_event.json()["error"]["param"] == "events"
        ok = client.post(hooks, json={"url": "https://93.184.215.14/hook", "events": ["fine_tuning.job.failed"]})
        assert ok.status_code == 200, ok.text  # a public address, by https
        assert client.get(hooks).json()["data"][0]["url"] == "https://93.184.215.14/hook"


def test_the_address_is_checked_again_at_send_time_and_pinned(receiver, monkeypatch):
    """A name that resolved publicly at registration and points at a loopback address later (DNS rebinding)
    reaches nothing; an allowed name is sent to the address that was checked, with its own Host header."""
    from tempering.services import webhooks
    from tempering.store import webhooks as events
    from tempering.store.models import Project, Webhook

    monkeypatch.setenv("TEMPERING_WEBHOOK_MAX_ATTEMPTS", "1")
    reset_settings()
    app = _app()
    settings, cipher, db = app.state.settings, app.state.cipher, app.state.db
    secret = webhooks.new_secret()
    with db.session() as session:
        project = session.query(Project).first()
        session.add(Webhook(id="wh_rebound", project_id=project.id, events=["deployment.created"],
                            url=f"http://rebound.example:{receiver.port}/r", secret_ciphertext=cipher.encrypt(secret)))
        session.flush()
        events.enqueue(session, project.id, "deployment.created", {"id": "deploy-x"})
    rebinding = webhooks.Sender(db, cipher, settings.model_copy(update={"webhook_allowed_hosts": []}),
                                resolver=lambda host, port: ["127.0.0.1"])
    assert rebinding.run_once() == 1
    assert receiver.requests == []
    with db.session(write=False) as session:
        delivery = webhooks.deliveries(session, project.id, "wh_rebound")[0]
        assert delivery.status == "failed" and "loopback" in delivery.last_error
    with db.session() as session:
        events.enqueue(session, project.id, "deployment.created", {"id": "deploy-y"})
    pinned = webhooks.Sender(db, cipher, settings.model_copy(update={"webhook_allowed_hosts": ["rebound.example"]}),
                             resolver=lambda host, port: ["127.0.0.1"])
    assert pinned.run_once() == 1
    [request] = receiver.wait_for(1, "/r")
    assert request["headers"]["Host"] == f"rebound.example:{receiver.port}"
    assert _verify(secret, request)["data"] == {"id": "deploy-y"}


def test_job_and_evaluation_final_states_send_openai_events(allowed, receiver):
    from tempering.jobs.runner import _finish
    from tempering.store.models import Evaluation, Job

    app = _app()
    with _client(app) as client:
        hooks = _hooks(client)
        project_id = client.get("/v1/me").json()["project_id"]
        secret = client.post(hooks, json={"url": receiver.url("/jobs"), "events": [
            "fine_tuning.job.succeeded", "fine_tuning.job.cancelled", "eval.run.canceled"]}).json()["secret"]
        with app.state.db.session() as session:
            for job_id in ("ftjob-hookdone", "ftjob-hookwait", "ftjob-hookfail"):
                session.add(Job(id=job_id, project_id=project_id, model=BASE, training_file="file-x", seed=1,
                                config={}, status="queued"))
            session.add(Evaluation(id="eval-hooked", project_id=project_id, model=BASE, data_file="file-x",
                                   status="queued"))
        _finish(app.state.db, "ftjob-hookdone", status="running")  # not final: no event
        _finish(app.state.db, "ftjob-hookdone", status="succeeded", fine_tuned_model="ft:x")
        _finish(app.state.db, "ftjob-hookfail", status="failed")  # not subscribed: no event
        assert client.post("/v1/fine_tuning/jobs/ftjob-hookwait/cancel").status_code == 200
        assert client.post("/v1/evaluations/eval-hooked/cancel").status_code == 200
        payloads = [_verify(secret, r) for r in receiver.wait_for(3, "/jobs")]
        assert sorted((p["type"], p["data"]["id"]) for p in payloads) == [
            ("eval.run.canceled", "eval-hooked"), ("fine_tuning.job.cancelled", "ftjob-hookwait"),
            ("fine_tuning.job.succeeded", "ftjob-hookdone")]
        time.sleep(0.2)
        assert len(receiver.requests) == 3


def test_only_owners_manage_webhooks():
    from tempering.services.projects import project_key

    app = _app()
    with _client(app) as client:
        hooks = _hooks(client)
        with app.state.db.session() as session:
            keys = {role: project_key(session, client.get("/v1/me").json()["project_id"], role, role)
                    for role in ("reader", "ai_developer")}
        for key in keys.values():
            other = TestClient(app, headers={"Authorization": f"Bearer {key}"})
            assert other.get(hooks).status_code == 403
            response = other.post(hooks, json={"url": "https://93.184.215.14/h", "events": ["deployment.created"]})
            assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
