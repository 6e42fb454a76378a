"""The usage ledger, the price table and the usage and costs API, against a live server with real jobs on the
tiny model: one server and one set of jobs (succeeded, cancelled mid-run, failed, cancelled while queued) and
two deployments for the whole module; plain HTTP, OpenAI's shapes checked by hand."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from conftest import TINY_ID, chat_example
from live_server import live_server, register_model
from postgres_fixture import postgres_server_fixture, postgres_url_fixture  # noqa: F401  (the fixtures)
from test_api import TRAIN, _jsonl

from tempering.settings import Settings
from tempering.store import usage

PRICES = {"training_per_1k_tokens": 0.5, "hosting_per_hour": 36.0, "input_per_1k_tokens": 0.1,
          "output_per_1k_tokens": 0.2}
QUESTION = [{"role": "user", "content": "What color is item 3?"}]


def _wait(http, job_id: str, until=("succeeded", "failed", "cancelled"), timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/fine_tuning/jobs/{job_id}").json()
        if job["status"] in until or job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']}")


def _job(http, file_id: str, **hyperparameters) -> str:
    response = http.post("/fine_tuning/jobs", json={"model": TINY_ID, "training_file": file_id, "seed": 3,
                                                    "hyperparameters": hyperparameters})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _cancel_mid_run(http, job_id: str) -> dict:
    """Cancel once the job has trained a step (its first step event is in)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = http.get(f"/fine_tuning/jobs/{job_id}/events", params={"limit": 5}).json()["data"]
        if any(e["type"] == "metrics" for e in events):
            break
        time.sleep(0.1)
    assert http.post(f"/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    return _wait(http, job_id)


def _ledger(home):
    from sqlalchemy import select

    from tempering.store.db import Database
    from tempering.store.models import UsageRecord

    db = Database(f"sqlite:///{home / 'tempering.db'}")
    try:
        with db.session(write=False) as session:
            return [{c: getattr(r, c) for c in ("kind", "model", "job_id", "deployment_id", "key_id",
                                                "trained_tokens", "input_tokens", "output_tokens",
                                                "hosting_seconds", "cost")}
                    for r in session.scalars(select(UsageRecord).order_by(UsageRecord.seq))]
    finally:
        db.dispose()


def _chat(base_url: str, key: str, model: str) -> dict:
    response = httpx.post(f"{base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                          json={"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 6})
    assert response.status_code == 200, response.text
    return response.json()["usage"]


@pytest.fixture(scope="module")
def foundry(tiny_model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("usage-home")
    register_model(home, TINY_ID, tiny_model_dir)
    with live_server(home, env={"TEMPERING_SERVE_THREADS": "1"}) as (url, key):
        base_url = f"{url}/v1"
        http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        yield _set_up(http, home, base_url, key)


def _set_up(http, home, base_url: str, key: str) -> dict:
    """The hub's prices; jobs that fail, succeed, are cancelled while queued and cancelled mid-run; two
    deployments (one deleted) and chats with two keys."""
    project = http.get("/me").json()["project_id"]
    hub = http.get("/organization/hubs").json()["data"][0]["id"]
    assert http.post(f"/organization/hubs/{hub}", json={"settings": {"prices": {TINY_ID: PRICES}}}).status_code == 200
    good_file = http.post("/files", files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"}).json()["id"]
    rows = [chat_example(f"q{i}", "word " * (1500 if i == 3 else 2)) for i in range(12)]  # line 4: too long
    bad_file = http.post("/files", files={"file": ("b.jsonl", _jsonl(rows))}, data={"purpose": "fine-tune"}).json()
    jobs = {"failed": _job(http, bad_file["id"]), "succeeded": _job(http, good_file, n_epochs=2, batch_size=4)}
    jobs = {name: _wait(http, job_id) for name, job_id in jobs.items()}
    many = _jsonl([chat_example(f"What color is item {i}?", f"Item {i} is red.") for i in range(200)])
    long_file = http.post("/files", files={"file": ("l.jsonl", many)}, data={"purpose": "fine-tune"}).json()["id"]
    long = _job(http, long_file, n_epochs=50, batch_size=1)  # 10,000 steps: cancelled long before its end
    assert _wait(http, long, until=("running",))["status"] == "running"
    queued = _job(http, good_file)  # the one worker is busy: this waits, and is cancelled before it trains
    assert http.post(f"/fine_tuning/jobs/{queued}/cancel").json()["status"] == "cancelled"
    jobs["queued"] = _wait(http, queued)
    jobs["long"] = _cancel_mid_run(http, long)
    model = jobs["succeeded"]["fine_tuned_model"]
    for name, target in (("ft", model), ("base", TINY_ID)):
        response = http.post("/deployments", json={"model": target, "name": name, "content_filter": False,
                                                   "force": True})
        assert response.status_code == 200, response.text
    second = http.post(f"/organization/projects/{project}/api_keys", json={"name": "second"}).json()
    keys = {"first": key, "second": second["value"]}
    chats = {"first": [_chat(base_url, key, "ft"), _chat(base_url, key, "ft")],
             "second": [_chat(base_url, second["value"], "base")]}
    time.sleep(1.1)  # the base deployment lives at least a second
    assert http.delete("/deployments/base").status_code == 200
    return {"http": http, "home": home, "base_url": base_url, "project": project, "jobs": jobs, "keys": keys,
            "key_ids": {"first": None, "second": second["id"]}, "chats": chats, "good_file": good_file}


def _usage(http, kind: str, **params) -> dict:
    response = http.get(f"/organization/{kind}", params={"start_time": int(time.time()) - 3600, **params})
    assert response.status_code == 200, response.text
    return response.json()


def _results(page: dict) -> list[dict]:
    return [r for bucket in page["data"] for r in bucket["results"]]


def test_the_ledger_charges_what_each_job_trained(foundry):
    jobs, ledger = foundry["jobs"], _ledger(foundry["home"])
    training = {row["job_id"]: row for row in ledger if row["kind"] == "training"}
    good, long = jobs["succeeded"], jobs["long"]
    assert good["status"] == "succeeded" and training[good["id"]]["trained_tokens"] == good["trained_tokens"] > 0
    assert training[good["id"]]["model"] == TINY_ID
    assert training[good["id"]]["cost"] == pytest.approx(good["trained_tokens"] / 1000 * PRICES["training_per_1k_tokens"])
    # cancelled mid-run: the tokens of the steps it trained, from the run's own event log
    assert long["status"] == "cancelled"
    events = (foundry["home"] / "runs" / long["id"].removeprefix("ftjob-") / "events.jsonl").read_text().splitlines()
    trained = sum(e["data"]["tokens"] for e in map(json.loads, events) if e["type"] == "metrics")
    assert 0 < training[long["id"]]["trained_tokens"] == trained
    # failed, and cancelled before training: free
    assert jobs["failed"]["status"] == "failed" and jobs["failed"]["id"] not in training
    assert jobs["queued"]["status"] == "cancelled" and jobs["queued"]["id"] not in training


def test_fine_tuning_usage_and_costs_in_openais_shapes(foundry):
    http, jobs = foundry["http"], foundry["jobs"]
    page = _usage(http, "usage/fine_tuning", bucket_width="1h", group_by=["project_id", "model"])
    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    bucket = page["data"][-1]
    assert bucket["object"] == "bucket" and bucket["end_time"] - bucket["start_time"] == 3600
    (result,) = _results(page)
    charged = sum(row["trained_tokens"] for row in _ledger(foundry["home"]) if row["kind"] == "training")
    assert result == {"object": "organization.usage.fine_tuning.result", "trained_tokens": charged, "num_jobs": 2,
                      "project_id": foundry["project"], "model": TINY_ID}
    assert charged > jobs["succeeded"]["trained_tokens"]

    costs = _usage(http, "costs", group_by=["line_item"])
    items = {r["line_item"]: r["amount"] for r in _results(costs)}
    assert items[f"{TINY_ID}, training"] == {"value": pytest.approx(charged / 1000 * 0.5, abs=1e-6), "currency": "usd"}
    assert {f"{TINY_ID}, inference", f"{TINY_ID}, hosting"} <= set(items)
    assert all(r["object"] == "organization.costs.result" and r["project_id"] is None for r in _results(costs))


def test_the_estimate_prices_by_the_same_table(foundry):
    http, good = foundry["http"], foundry["jobs"]["succeeded"]
    estimate = http.post("/fine_tuning/estimates", json={"model": TINY_ID, "training_file": foundry["good_file"],
                                                        "seed": 3, "hyperparameters": {"n_epochs": 2,
                                                                                       "batch_size": 4}}).json()
    assert estimate["price_per_1k_tokens"] == PRICES["training_per_1k_tokens"]
    assert estimate["trained_tokens"] == good["trained_tokens"]
    charged = next(r for r in _ledger(foundry["home"]) if r["job_id"] == good["id"])
    assert estimate["cost"] == round(charged["cost"], 4)


def test_chat_tokens_are_metered_per_key(foundry):
    http, chats = foundry["http"], foundry["chats"]
    deadline = time.monotonic() + 20  # the request log's writer thread catches up
    while time.monotonic() < deadline:
        page = _usage(http, "usage/completions", bucket_width="1m", limit=61, group_by=["api_key_id"])
        if sum(r["num_model_requests"] for r in _results(page)) == 3:
            break
        time.sleep(0.3)
    by_key = {r["api_key_id"]: r for r in _results(page)}
    second = by_key.pop(foundry["key_ids"]["second"])
    (first,) = by_key.values()
    for result, sent in ((first, chats["first"]), (second, chats["second"])):
        assert result["object"] == "organization.usage.completions.result"
        assert result["input_tokens"] == sum(u["prompt_tokens"] for u in sent) > 0
        assert result["output_tokens"] == sum(u["completion_tokens"] for u in sent) > 0
        assert result["num_model_requests"] == len(sent) and result["project_id"] is None
    inference = [r for r in _ledger(foundry["home"]) if r["kind"] == "inference"]
    assert len(inference) == 3 and len({r["deployment_id"] for r in inference}) == 2  # ft and base
    assert all(r["model"] == TINY_ID for r in inference)
    cost = sum(r["input_tokens"] * 0.1 + r["output_tokens"] * 0.2 for r in inference) / 1000
    assert sum(r["cost"] for r in inference) == pytest.approx(cost)


def test_hosting_counts_deleted_and_live_deployments(foundry):
    http = foundry["http"]
    (deleted,) = [r for r in _ledger(foundry["home"]) if r["kind"] == "hosting"]
    assert deleted["hosting_seconds"] >= 1 and deleted["cost"] == pytest.approx(deleted["hosting_seconds"] / 100)
    page = _usage(http, "usage/hosting", group_by=["model"])
    (result,) = _results(page)
    assert result["object"] == "organization.usage.hosting.result" and result["num_deployments"] == 2
    assert result["hosting_seconds"] > deleted["hosting_seconds"] and result["model"] == TINY_ID


def test_buckets_page_and_questions_are_checked(foundry):
    http = foundry["http"]
    start = int(time.time()) - 5 * 60
    first = _usage(http, "usage/completions", start_time=start, bucket_width="1m", limit=2)
    assert len(first["data"]) == 2 and first["has_more"] is True
    assert first["data"][1]["start_time"] == first["data"][0]["end_time"]
    second = _usage(http, "usage/completions", start_time=start, bucket_width="1m", limit=2, page=first["next_page"])
    assert second["data"][0]["start_time"] == first["data"][1]["end_time"]
    assert _usage(http, "usage/fine_tuning", **{"project_ids[]": ["proj_elsewhere"]})["data"][-1]["results"] == []
    for params, param in (({"bucket_width": "2h"}, "bucket_width"), ({"group_by": ["line_item"]}, "group_by"),
                          ({"limit": 500}, "limit"), ({"page": "nonsense"}, "page")):
        response = http.get("/organization/usage/fine_tuning", params={"start_time": start, **params})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    assert http.get("/organization/costs", headers={"Authorization": "Bearer tk-wrong"}).status_code == 401


def test_cli_prints_usage_as_csv(foundry, tmp_path):
    env = {**os.environ, "TEMPERING_SERVER": foundry["base_url"], "TEMPERING_API_KEY": foundry["keys"]["first"],
           "TEMPERING_HOME": str(tmp_path / "client-home")}
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    done = subprocess.run([sys.executable, "-m", "tempering.cli.main", "usage", "--since", since, "--csv",
                           "--project", foundry["project"]], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    training = [r for r in rows if r["kind"] == "training"]
    charged = sum(row["trained_tokens"] for row in _ledger(foundry["home"]) if row["kind"] == "training")
    assert sum(int(r["trained_tokens"]) for r in training) == charged
    assert {r["kind"] for r in rows} == {"training", "inference", "hosting"}
    assert all(float(r["cost_usd"]) > 0 for r in rows)


def test_price_table_falls_back_from_the_hub_to_the_server():
    server = Settings(price_per_1k_training_tokens={"a": 1.0, "*": 2.0}, price_per_hosting_hour={"*": 3.0},
                      price_per_1k_input_tokens={}, price_per_1k_output_tokens={"a": 4.0})
    hub = {"prices": {"a": {"input_per_1k_tokens": 0.5}, "*": {"training_per_1k_tokens": 0.25}}}
    assert usage.price_table(None, "a", server) == usage.Prices(1.0, 3.0, 0.0, 4.0)
    assert usage.price_table(hub, "a", server) == usage.Prices(0.25, 3.0, 0.5, 4.0)
    assert usage.price_table(hub, "b", server).training_per_1k_tokens == 0.25
    from tempering.errors import TemperingError

    with pytest.raises(TemperingError) as wrong:
        usage.check_prices({"a": {"training_per_1k_tokens": -1, "per_token": 1}, "b": 3})
    assert wrong.value.param == "settings.prices" and "per_token" in wrong.value.message and "'b'" in wrong.value.message


# ---------------------------------------------------------------- the bucketing, on SQLite and PostgreSQL

T0 = 1_700_000_000 - 1_700_000_000 % 3600  # an hour's start


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request, tmp_path):
    from tempering.store.db import Database

    url = f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    db = Database(url)
    db.migrate()
    yield db
    db.dispose()


def _seed_ledger(db) -> str:
    """Tokens in hours 0 and 1, a job ending in hour 1, a deleted deployment over hours 0-1 (priced 0.01 USD a
    second when it was deleted) and a live one since 200 s before "now" (priced 1 USD a second today)."""
    from tempering.store.models import Deployment, Hub, Project, UsageRecord

    with db.session() as session:
        hub = Hub(name="h", settings={"prices": {"m": {"hosting_per_hour": 3600.0}}})
        session.add(hub)
        session.flush()
        project = Project(name="p", hub_id=hub.id)
        session.add(project)
        session.flush()
        tokens = [(10, "k1", 100, 10, 1.0), (20, "k2", 50, 5, 2.0), (3700, "k1", 7, 1, 4.0)]
        session.add_all(UsageRecord(project_id=project.id, kind="inference", model="m", key_id=key, created_at=T0 + at,
                                    started_at=T0 + at, input_tokens=i, output_tokens=o, requests=1, cost=cost)
                        for at, key, i, o, cost in tokens)
        session.add(UsageRecord(project_id=project.id, kind="training", model="m", job_id="ftjob-a",
                                created_at=T0 + 3605, started_at=T0 + 3000, trained_tokens=1000, cost=0.5))
        session.add(UsageRecord(project_id=project.id, kind="hosting", model="m", deployment_id="deploy-old",
                                started_at=T0 + 1800, created_at=T0 + 5400, hosting_seconds=3600, cost=36.0))
        session.add(Deployment(project_id=project.id, name="live", model="m", base_model="m", created_at=T0 + 7000))
        other = Project(name="other", hub_id=hub.id)  # the caller has no role here: never counted
        session.add(other)
        session.flush()
        session.add(UsageRecord(project_id=other.id, kind="training", model="m", job_id="ftjob-b",
                                created_at=T0 + 10, started_at=T0, trained_tokens=99, cost=9.0))
        return project.id, other.id


def test_buckets_sum_the_ledger(ledger_db):
    from tempering.services import usage as service
    from tempering.services.access import Caller

    mine, other = _seed_ledger(ledger_db)
    caller = Caller(project_id=mine, role="reader")  # a service account's key: its project alone
    ask = {"start_time": T0 + 59, "end_time": T0 + 3 * 3600, "bucket_width": "1h"}
    with ledger_db.session(write=False) as session:
        def page(kind, **more):
            q = service.UsageQuery(**{**ask, **more})
            if kind == "costs":
                return service.costs_page(session, caller, q, now=T0 + 7200)
            return service.usage_page(session, caller, kind, q, now=T0 + 7200)

        completions = page("completions", group_by=["api_key_id"])
        assert [b["start_time"] for b in completions["data"]] == [T0, T0 + 3600, T0 + 7200]
        assert [[(r["api_key_id"], r["input_tokens"], r["output_tokens"], r["num_model_requests"])
                 for r in b["results"]] for b in completions["data"]] == [
            [("k1", 100, 10, 1), ("k2", 50, 5, 1)], [("k1", 7, 1, 1)], []]
        training = page("fine_tuning")
        assert [[(r["trained_tokens"], r["num_jobs"]) for r in b["results"]] for b in training["data"]] == [
            [], [(1000, 1)], []]
        hosting = page("hosting", group_by=["model"])
        assert [[(r["hosting_seconds"], r["num_deployments"], r["model"]) for r in b["results"]]
                for b in hosting["data"]] == [[(1800, 1, "m")], [(2000, 2, "m")], []]
        costs = page("costs", group_by=["line_item"])
        assert [{r["line_item"]: r["amount"]["value"] for r in b["results"]} for b in costs["data"]] == [
            {"m, inference": 3.0, "m, hosting": 18.0}, {"m, inference": 4.0, "m, training": 0.5, "m, hosting": 218.0},
            {}]
        first = page("completions", limit=2)
        assert len(first["data"]) == 2 and first["has_more"]
        rest = page("completions", limit=2, page=first["next_page"])
        assert [b["start_time"] for b in rest["data"]] == [T0 + 7200] and not rest["has_more"]
        assert page("completions", project_ids=["proj_other"])["data"][0]["results"] == []
        assert page("fine_tuning", project_ids=[other])["data"][0]["results"] == []
        # without end_time: up to now, this second included (the ledger's times are whole seconds): the job charged
        # at T0 + 3605 counts when asked within that same second
        now = T0 + 3605
        tuned = service.usage_page(session, caller, "fine_tuning", service.UsageQuery(T0, bucket_width="1h"), now=now)
        assert [[r["trained_tokens"] for r in b["results"]] for b in tuned["data"]] == [[], [1000]]
        costs = service.costs_page(session, caller, service.UsageQuery(T0, bucket_width="1h", group_by=["line_item"]),
                                   now=now)["data"]
        assert "m, training" in {r["line_item"] for r in costs[1]["results"]}


def test_migration_0007_keeps_the_request_log(tmp_path):
    """A database at 0006 with a deployment's logged request: after 0007 the request is kept (no key), and the
    ledger starts empty."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from tempering.store.db import MIGRATIONS, Database, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
        connection.execute(text("INSERT INTO projects (id, name, created_at, quotas, status) "
                                "VALUES ('proj_a', 'a', 1, '{}', 'active')"))
        connection.execute(text(
            "INSERT INTO deployments (id, project_id, name, model, base_model, task, content_filter, "
            "max_concurrent_requests, backend, status, created_at) VALUES ('deploy-a', 'proj_a', 'a', 'm', 'm', "
            "'chat', true, 8, 'local', 'succeeded', 1)"))
        connection.execute(text(
            "INSERT INTO deployment_requests (deployment_id, created_at, endpoint, stream, status, latency_ms, "
            "prompt_tokens, completion_tokens) VALUES ('deploy-a', 2.0, 'chat.completions', false, 200, 5.0, 3, 4)"))
    engine.dispose()
    db = Database(url)
    db.migrate()
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() >= "0007"
        assert connection.execute(text("SELECT prompt_tokens, key_id FROM deployment_requests")).all() == [(3, None)]
        assert connection.execute(text("SELECT count(*) FROM usage_records")).scalar() == 0
        assert connection.execute(text("PRAGMA foreign_key_list(deployment_requests)")).all()  # kept
    db.dispose()
