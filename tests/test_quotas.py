"""Quotas and rate limits (docs/quotas.md): a project's quotas resolved and validated; requests and tokens per
minute per deployment with 429, Retry-After and OpenAI's x-ratelimit-* headers, shared through a real
redis-server by two app instances; a job over its project's concurrent_jobs quota waiting, told why, and
starting when a slot frees; a job that could never fit refused; uploads past stored_bytes and deployments past
their count refused."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest
from conftest import TINY_ID, chat_example

from tempering.settings import get_settings

TRAIN = "".join(json.dumps(chat_example(f"Name number {i}.", f"Number {i} is {i * 11}.")) + "\n"
                for i in range(12)).encode()
QUESTION = [{"role": "user", "content": "What is item 3?"}]
HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def _app(settings=None, workers: int = 0):
    from tempering.api.app import create_app

    return create_app(settings or get_settings(), workers=workers)


def _client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, headers={"Authorization": f"Bearer {app.state.initial_api_key}"})


def _project(http) -> str:
    return http.get("/v1/me").json()["project_id"]


def _set_quotas(http, **quotas) -> dict:
    response = http.post(f"/v1/organization/projects/{_project(http)}", json={"quotas": quotas})
    assert response.status_code == 200, response.text
    return response.json()


def _chat(http, max_tokens: int = 4):
    return http.post("/v1/chat/completions", json={"model": "base", "messages": QUESTION, "max_tokens": max_tokens,
                                                   "temperature": 0})


def test_quotas_resolve_from_server_hub_and_project_and_are_validated(tempering_home):
    with _client(_app()) as http:
        project = _project(http)
        defaults = get_settings().default_quotas
        assert http.get(f"/v1/organization/projects/{project}").json()["effective_quotas"] == defaults
        hub = http.get(f"/v1/organization/projects/{project}").json()["hub_id"]
        assert http.post(f"/v1/organization/hubs/{hub}",
                         json={"settings": {"default_quotas": {"deployments": 5, "stored_bytes": 1000}}}).status_code == 200
        body = _set_quotas(http, deployments=2)
        assert body["quotas"] == {"deployments": 2}
        assert body["effective_quotas"] == {**defaults, "deployments": 2, "stored_bytes": 1000}
        assert _set_quotas(http, deployments=None)["effective_quotas"]["deployments"] == 5  # the hub's again

        bad = http.post(f"/v1/organization/projects/{project}", json={"quotas": {"gpus": 1, "deployments": -1}})
        assert bad.status_code == 400
        assert "quotas.gpus" in bad.json()["error"]["message"] and "quotas.deployments" in bad.json()["error"]["message"]
        bad_hub = http.post(f"/v1/organization/hubs/{hub}", json={"settings": {"default_quotas": {"jobs": 1}}})
        assert bad_hub.status_code == 400 and bad_hub.json()["error"]["code"] == "invalid_quota"


def test_requests_and_tokens_per_minute_answer_429_with_openai_headers(tiny_model):
    with _client(_app()) as http:
        created = http.post("/v1/deployments", json={"model": tiny_model, "name": "base",
                                                     "max_requests_per_1_minute": 3})
        assert created.status_code == 200, created.text
        assert created.json()["max_tokens_per_1_minute"] == 200_000  # Azure's serverless default
        project = _project(http)
        limits = http.get(f"/v1/organization/projects/{project}/rate_limits").json()["data"]
        assert limits == [{"object": "project.rate_limit", "id": f"rl-{created.json()['id']}", "model": "base",
                           "max_requests_per_1_minute": 3, "max_tokens_per_1_minute": 200_000}]

        first = _chat(http, max_tokens=40)
        assert first.status_code == 200, first.text
        assert all(name in first.headers for name in HEADERS)
        assert first.headers["x-ratelimit-limit-requests"] == "3"
        assert first.headers["x-ratelimit-remaining-requests"] == "2"
        usage = first.json()["usage"]
        # charged prompt + 40 up front; the tokens not generated were given back
        assert int(first.headers["x-ratelimit-remaining-tokens"]) == 200_000 - usage["total_tokens"]

        streamed = http.post("/v1/chat/completions", json={"model": "base", "messages": QUESTION, "max_tokens": 2,
                                                           "stream": True})
        assert streamed.status_code == 200 and streamed.headers["x-ratelimit-remaining-requests"] == "1"
        assert _chat(http).status_code == 200
        over = _chat(http)
        assert over.status_code == 429, over.text
        assert over.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(over.headers["retry-after"]) <= 61
        assert over.headers["x-ratelimit-remaining-requests"] == "0" and all(name in over.headers for name in HEADERS)

        # tokens per minute, lowered through OpenAI's rate limit route to this minute's use plus 60 (the count
        # of the minute is kept across the change)
        rl_id = limits[0]["id"]
        used = 200_000 - int(over.headers["x-ratelimit-remaining-tokens"])
        changed = http.post(f"/v1/organization/projects/{project}/rate_limits/{rl_id}",
                            json={"max_requests_per_1_minute": 1000, "max_tokens_per_1_minute": used + 60})
        assert changed.status_code == 200 and changed.json()["max_tokens_per_1_minute"] == used + 60
        too_big = _chat(http, max_tokens=60)  # fits the limit alone, not what is left of this minute
        assert too_big.status_code == 429 and "tokens per minute" in too_big.json()["error"]["message"]
        assert int(too_big.headers["x-ratelimit-limit-tokens"]) == used + 60 and "retry-after" in too_big.headers
        assert int(too_big.headers["x-ratelimit-remaining-tokens"]) <= 60
        never = _chat(http, max_tokens=used + 100)
        assert never.status_code in (400, 429) and "more than deployment base's limit" in never.json()["error"]["message"]
        assert http.post(f"/v1/organization/projects/{project}/rate_limits/rl-nope", json={}).status_code == 404
        log = http.get(f"/v1/deployments/{created.json()['id']}/requests").json()["data"]
        assert sum(1 for r in log if r["status"] == 429) >= 2  # refusals are in the request log


def _redis_server(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("redis-server did not start")


def test_two_app_instances_share_the_limit_through_redis(tiny_model, tmp_path):
    process, port = _redis_server(tmp_path)
    try:
        settings = get_settings().model_copy(update={"rate_limit_url": f"redis://127.0.0.1:{port}"})
        one, two = _app(settings), _app(settings)  # two API processes' worth: one home, one Redis
        with _client(one) as a, _client(two) as b:
            b.headers["Authorization"] = a.headers["Authorization"]
            assert a.post("/v1/deployments", json={"model": tiny_model, "name": "base",
                                                   "max_requests_per_1_minute": 3}).status_code == 200
            answers = [_chat(client, 1) for client in (a, b, a, b)]
            assert [r.status_code for r in answers] == [200, 200, 200, 429]
            assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0", "0"]
            process.terminate()
            process.wait(timeout=10)
            down = _chat(a, 1)  # Redis gone: served, uncounted (the server's log says so)
            assert down.status_code == 200 and "x-ratelimit-limit-requests" not in down.headers
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_uploads_past_stored_bytes_and_deployments_past_their_count_are_refused(tiny_model, tempering_home):
    with _client(_app()) as http:
        first = http.post("/v1/files", files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"})
        assert first.status_code == 200, first.text
        line = TRAIN.splitlines(keepends=True)[0]
        _set_quotas(http, stored_bytes=len(TRAIN) + len(line), deployments=1)
        stored = sorted(p.name for p in (tempering_home / "artifacts" / "files").iterdir())
        over = http.post("/v1/files", files={"file": ("u.jsonl", TRAIN)}, data={"purpose": "fine-tune"})
        assert over.status_code == 413, over.text
        assert over.json()["error"]["code"] == "quota_exceeded" and "stored_bytes" in over.json()["error"]["message"]
        assert sorted(p.name for p in (tempering_home / "artifacts" / "files").iterdir()) == stored  # nothing kept
        assert len(http.get("/v1/files").json()["data"]) == 1
        assert http.post("/v1/files", files={"file": ("s.jsonl", line)},
                         data={"purpose": "evals"}).status_code == 200  # what fits is still taken

        assert http.post("/v1/deployments", json={"model": tiny_model, "name": "one"}).status_code == 200
        second = http.post("/v1/deployments", json={"model": tiny_model, "name": "two"})
        assert second.status_code == 429 and second.json()["error"]["code"] == "quota_exceeded"
        assert "deployments quota is 1" in second.json()["error"]["message"]


def test_a_job_that_could_never_fit_a_day_is_refused_and_one_that_fits_tomorrow_waits(tiny_model, tempering_home):
    from tempering.jobs import queue
    from tempering.store.models import Job, JobEvent

    app = _app()
    with _client(app) as http:
        file_id = http.post("/v1/files", files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"}).json()["id"]
        body = {"model": TINY_ID, "training_file": file_id, "hyperparameters": {"n_epochs": 2}}
        estimate = http.post("/v1/fine_tuning/estimates", json=body).json()["trained_tokens"]
        _set_quotas(http, trained_tokens_per_day=estimate - 1)
        refused = http.post("/v1/fine_tuning/jobs", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "quota_exceeded"
        assert "trained_tokens_per_day quota" in refused.json()["error"]["message"]

        _set_quotas(http, trained_tokens_per_day=estimate + estimate // 2)
        jobs_created = [http.post("/v1/fine_tuning/jobs", json=body).json()["id"] for _ in range(2)]
    db = app.state.db
    claimed = queue.claim(db, "w", 30)  # either: both were created in the same second
    jobs = [claimed] + [j for j in jobs_created if j != claimed]
    with db.session() as session:  # the first one ran today
        done = session.get(Job, jobs[0])
        assert done.estimated_tokens == estimate
        done.status, done.worker_id, done.trained_tokens = "succeeded", None, estimate
    for _ in range(2):  # the second fits a day, not what is left of today: the claim tells it why, once
        assert queue.claim(db, "w", 30) is None
    with db.session(write=False) as session:
        messages = [e.message for e in session.query(JobEvent).filter(JobEvent.job_id == jobs[1])]
        assert [m for m in messages if "trained_tokens_per_day" in m and "00:00 UTC" in m] == [messages[-1]]
    with db.session() as session:  # a new day: yesterday's tokens no longer count
        session.get(Job, jobs[0]).claimed_at -= queue.DAY
    assert queue.claim(db, "w", 30) == jobs[1]


def test_a_job_over_the_concurrent_jobs_quota_waits_and_starts_when_a_slot_frees(tiny_model, tempering_home):
    app = _app(workers=2)
    with _client(app) as http:
        _set_quotas(http, concurrent_jobs=1)
        file_id = http.post("/v1/files", files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"}).json()["id"]
        body = {"model": TINY_ID, "training_file": file_id, "seed": 1,
                "hyperparameters": {"n_epochs": 1, "batch_size": 4}}
        first, second = (http.post("/v1/fine_tuning/jobs", json=body).json()["id"] for _ in range(2))
        deadline = time.monotonic() + 120
        statuses = []
        while time.monotonic() < deadline:
            statuses = [http.get(f"/v1/fine_tuning/jobs/{j}").json()["status"] for j in (first, second)]
            if all(s in ("succeeded", "failed") for s in statuses):
                break
            time.sleep(0.25)
        assert statuses == ["succeeded", "succeeded"]
        from tempering.store.models import Job

        with app.state.db.session(write=False) as session:  # either may be claimed first (created in one second)
            ran, waited = sorted((session.get(Job, j) for j in (first, second)), key=lambda job: job.finished_at)
            assert waited.claimed_at >= ran.finished_at  # it started once the other had ended
            waited_id = waited.id
        events = [e["message"] for e in http.get(f"/v1/fine_tuning/jobs/{waited_id}/events?limit=100").json()["data"]]
        # told by the claim that took the other job, or by the other worker's claim while that job ran
        assert any("concurrent_jobs quota is 1" in m for m in events), events


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_unused_tokens_are_given_back_in_either_storage(storage, tmp_path):
    from tempering.errors import RateLimitedError
    from tempering.services.ratelimits import DeploymentLimiter

    process = None
    url = None
    if storage == "redis":
        process, port = _redis_server(tmp_path)
        url = f"redis://127.0.0.1:{port}"
    try:
        limiter = DeploymentLimiter(url)
        assert limiter.admit("d", "d", 10, 1000, 300).remaining_tokens == 700  # prompt + max_tokens × n up front
        assert limiter.settle("d", 10, 1000, 300, 120).remaining_tokens == 880  # 180 not generated: given back
        assert limiter.admit("d", "d", 10, 1000, 880).remaining_tokens == 0
        with pytest.raises(RateLimitedError) as refused:
            limiter.admit("d", "d", 10, 1000, 1)
        assert refused.value.code == "rate_limit_exceeded" and refused.value.retry_after >= 1
        assert refused.value.headers["x-ratelimit-remaining-requests"] == "8"  # the refused one is not counted
        assert limiter.settle("d", 10, 1000, 5000, 0).remaining_tokens <= 1000  # never below an empty window
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
