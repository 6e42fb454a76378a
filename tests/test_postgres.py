"""The service on PostgreSQL: migrations, the job claim under several worker processes, the API in-process,
and one real job run by a worker. Runs on a throwaway server started from the Debian binaries
(``postgres_fixture``); skipped when they or psycopg are missing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

pytest.importorskip("psycopg")

from conftest import TINY_ID, chat_example
from postgres_fixture import postgres_server_fixture, postgres_url_fixture  # noqa: F401  (the fixtures)

from tempering.settings import get_settings, reset_settings


def head_revision() -> str:
    """The newest migration, as Alembic's script directory says (so adding a migration needs no test edit)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from tempering.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()

TRAIN = "".join(json.dumps(chat_example(f"What color is item {i}?", f"Item {i} is {['red', 'blue'][i % 2]}."))
                + "\n" for i in range(20)).encode()


@pytest.fixture
def pg_settings(postgres_url, tempering_home, monkeypatch):
    """Settings (and the environment worker subprocesses inherit) pointing at the test's database."""
    monkeypatch.setenv("TEMPERING_DATABASE_URL", postgres_url)
    reset_settings()
    settings = get_settings()
    assert settings.database == postgres_url
    yield settings
    reset_settings()


def _seed_jobs(db, count: int, *, priority_job: int | None = None, quotas: dict | None = None,
               estimated_tokens: int | None = None) -> list[str]:
    from tempering.store.models import Job, Project

    with db.session() as session:
        project = Project(name="p", quotas=quotas or {"concurrent_jobs": 1000})  # room for every job by default
        session.add(project)
        session.flush()
        jobs = [Job(project_id=project.id, model="m", training_file="file-x", seed=i, config={"i": i},
                    status="queued", created_at=1000 + i, priority=1 if i == priority_job else 0,
                    estimated_tokens=estimated_tokens)
                for i in range(count)]
        session.add_all(jobs)
        session.flush()
        return [j.id for j in jobs]


def test_migrations_apply_twice_and_concurrently(postgres_url, postgres_server):
    from sqlalchemy import inspect, text

    from tempering.store.db import Database

    # several processes starting at once (a server and its workers) all migrate the same empty database
    script = f"from tempering.store.db import Database; Database({postgres_url!r}).migrate()"
    starters = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
                for _ in range(3)]
    for starter in starters:
        assert starter.wait(timeout=60) == 0, starter.stderr.read()

    db = Database(postgres_url)
    try:
        db.migrate()
        db.migrate()  # idempotent
        tables = set(inspect(db.engine).get_table_names())
        assert {"projects", "api_keys", "files", "jobs", "job_events", "job_checkpoints", "deployments",
                "deployment_requests", "evaluations", "alembic_version"} <= tables
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
            types = dict(connection.execute(text(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'jobs'")).all())
        assert types["created_at"] == "bigint" and types["lease_expires_at"] == "double precision"
        assert types["config"] == "json"
    finally:
        db.dispose()


CLAIMER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from tempering.jobs import queue
    from tempering.store.db import Database

    url, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    db = Database(url)
    with db.engine.connect():  # connected before the start signal, so all claimers start together
        pass
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    while (job_id := queue.claim(db, name, 30)) is not None:
        print(job_id, flush=True)
    db.dispose()
""")


def _race(postgres_url, tmp_path, processes: int) -> dict[str, list[str]]:
    """Start ``processes`` claimer processes together; what each claimed."""
    go = tmp_path / "go"
    claimers = [subprocess.Popen([sys.executable, "-c", CLAIMER, postgres_url, f"w{i}", str(go)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
    for claimer in claimers:
        assert claimer.stdout.readline().strip() == "ready", claimer.stderr.read()
    go.touch()
    claimed: dict[str, list[str]] = {}
    for i, claimer in enumerate(claimers):
        out, err = claimer.communicate(timeout=60)
        assert claimer.returncode == 0, err
        claimed[f"w{i}"] = out.split()
    return claimed


def test_racing_claims_stay_within_the_project_quotas(postgres_url, tmp_path):
    """The queue's quotas are part of the one claim: four processes racing for twenty jobs of a project allowed
    three at once take exactly three; with a day's trained tokens for two jobs, two."""
    from sqlalchemy import func, select

    from tempering.jobs import queue
    from tempering.store.db import Database
    from tempering.store.models import Job, JobEvent

    db = Database(postgres_url)
    db.migrate()
    try:
        _seed_jobs(db, 20, quotas={"concurrent_jobs": 3})
        assert sum(len(jobs) for jobs in _race(postgres_url, tmp_path, 4).values()) == 3
        assert queue.claim(db, "late", 30) is None
        # another project: 2 × 100 estimated tokens fit its day's 250, a third does not
        _seed_jobs(db, 20, quotas={"trained_tokens_per_day": 250}, estimated_tokens=100)
        (tmp_path / "go").unlink()
        assert sum(len(jobs) for jobs in _race(postgres_url, tmp_path, 4).values()) == 2
        assert queue.claim(db, "late", 30) is None
        with db.session(write=False) as session:  # each waiting job told why by the claims, once
            told = session.scalars(select(JobEvent.job_id).where(JobEvent.message.startswith("Waiting:"))).all()
            assert len(told) == len(set(told)) == 17 + 18
            assert session.scalar(select(func.count(Job.id)).where(Job.quota_wait.is_not(None))) == 17 + 18
    finally:
        db.dispose()


def test_worker_processes_never_claim_a_job_twice(postgres_url, tmp_path):
    from sqlalchemy import select

    from tempering.jobs import queue
    from tempering.store.db import Database
    from tempering.store.models import Job

    db = Database(postgres_url)
    db.migrate()
    try:
        ids = _seed_jobs(db, 41, priority_job=7)
        assert queue.claim(db, "solo", 30) == ids[7]  # the highest priority first …
        assert queue.claim(db, "solo", 30) == ids[0]  # … then first come, first served
        remaining = set(ids) - {ids[7], ids[0]}
        remaining.discard(ids[-1])
        with db.session() as session:  # one job whose worker died (its lease expired): claimable again
            abandoned = session.get(Job, ids[-1])
            abandoned.worker_id, abandoned.lease_expires_at, abandoned.attempts = "dead", 1.0, 1
        remaining.add(ids[-1])

        go = tmp_path / "go"
        claimers = [subprocess.Popen([sys.executable, "-c", CLAIMER, postgres_url, f"w{i}", str(go)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
        for claimer in claimers:
            assert claimer.stdout.readline().strip() == "ready", claimer.stderr.read()
        go.touch()
        claimed: dict[str, list[str]] = {}
        for i, claimer in enumerate(claimers):
            out, err = claimer.communicate(timeout=60)
            assert claimer.returncode == 0, err
            claimed[f"w{i}"] = out.split()
        every = [job_id for jobs in claimed.values() for job_id in jobs]
        counts = Counter(every)
        assert not [j for j, n in counts.items() if n > 1], f"claimed twice: {counts.most_common(3)}"
        assert set(every) == remaining and len(every) == 39

        with db.session(write=False) as session:  # the database agrees: one claim each, by its claimer
            rows = {j.id: j for j in session.scalars(select(Job))}
        owner = {job_id: name for name, jobs in claimed.items() for job_id in jobs}
        for job_id in remaining:
            assert rows[job_id].worker_id == owner[job_id]
            assert rows[job_id].attempts == (2 if job_id == ids[-1] else 1)
        assert queue.claim(db, "late", 30) is None
        print("claims per worker:", {name: len(jobs) for name, jobs in claimed.items()})
    finally:
        db.dispose()


def test_worker_id_fits_the_column_with_a_long_hostname(postgres_url, monkeypatch):
    """PostgreSQL enforces VARCHAR(64) on jobs.worker_id (SQLite never did); hostnames go up to 64."""
    import socket

    from tempering.jobs import queue
    from tempering.jobs.worker import Worker
    from tempering.store.db import Database

    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 64)
    db = Database(postgres_url)
    db.migrate()
    try:
        [job_id] = _seed_jobs(db, 1)
        worker = Worker(db)
        assert worker.id.startswith("h" * 40 + "-") and len(worker.id) <= 64
        assert queue.claim(db, worker.id, 30) == job_id
        assert queue.heartbeat(db, job_id, worker.id, 30)
    finally:
        db.dispose()


def _client(settings):
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app

    app = create_app(settings, workers=0)
    return app, TestClient(app), {"Authorization": f"Bearer {app.state.initial_api_key}"}


def test_api_flow_in_process(pg_settings, tiny_model):
    app, client, auth = _client(pg_settings)
    assert app.state.initial_api_key  # the first start on this database made the admin key
    with client:
        bad = client.post("/v1/files", headers=auth, files={"file": ("bad.jsonl", b'{"messages": [}\n' * 12)},
                          data={"purpose": "fine-tune"})
        assert bad.status_code == 400 and "invalid_json" in bad.json()["error"]["message"]
        uploaded = client.post("/v1/files", headers=auth, files={"file": ("t.jsonl", TRAIN)},
                               data={"purpose": "fine-tune"})
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["id"]
        files = client.get("/v1/files", headers=auth).json()["data"]
        assert {f["id"]: f["status"] for f in files}[file_id] == "processed"
        assert any(f["status"] == "error" for f in files)  # the invalid upload is kept to be inspected
        assert client.get(f"/v1/files/{file_id}/content", headers=auth).content == TRAIN

        created = []
        for i in range(5):
            response = client.post("/v1/fine_tuning/jobs", headers=auth, json={
                "model": TINY_ID, "training_file": file_id, "suffix": f"s{i}", "seed": i,
                "metadata": {"team": "search", "n": str(i)},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}})
            assert response.status_code == 200, response.text
            created.append(response.json())
        assert created[0]["status"] == "validating_files" and created[0]["metadata"] == {"team": "search", "n": "0"}

        pages, after = [], None
        while True:  # newest first, two at a time
            params = {"limit": 2, **({"after": after} if after else {})}
            page = client.get("/v1/fine_tuning/jobs", headers=auth, params=params).json()
            pages.append([j["id"] for j in page["data"]])
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        assert [len(p) for p in pages] == [2, 2, 1]
        listed = [j for p in pages for j in p]
        assert sorted(listed) == sorted(j["id"] for j in created) and len(set(listed)) == 5
        newest_first = sorted(created, key=lambda j: (j["created_at"], j["id"]), reverse=True)
        assert listed == [j["id"] for j in newest_first]

        job_id = created[2]["id"]
        got = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth).json()
        assert got["hyperparameters"]["n_epochs"] == 2 and got["suffix"] == "s2" and got["seed"] == 2
        cancelled = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth).json()
        assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
        again = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth)
        assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_state"
        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=auth).json()["data"]
        assert [e["message"] for e in events] == ["Cancel requested", f"Created fine-tuning job: {job_id}"]
        assert client.get("/v1/fine_tuning/jobs/ftjob-nothere", headers=auth).status_code == 404
        in_use = client.delete(f"/v1/files/{file_id}", headers=auth)  # unfinished jobs still read it
        assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "file_in_use"
        for job in created:
            client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth)
        assert client.delete(f"/v1/files/{file_id}", headers=auth).json()["deleted"] is True
        assert client.get(f"/v1/files/{file_id}", headers=auth).status_code == 404

    _, again, _ = _client(pg_settings)  # a restart on the same database: no new key, the jobs are all there
    assert again.app.state.initial_api_key is None
    assert len(again.get("/v1/fine_tuning/jobs", headers=auth).json()["data"]) == 5
    again.app.state.db.dispose()


def test_worker_runs_a_job_to_succeeded(pg_settings, tiny_model, tempering_home):
    from tempering.jobs.worker import Worker

    app, client, auth = _client(pg_settings)
    file_id = client.post("/v1/files", headers=auth, files={"file": ("t.jsonl", TRAIN)},
                          data={"purpose": "fine-tune"}).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", headers=auth, json={
        "model": TINY_ID, "training_file": file_id, "suffix": "pg", "seed": 3,
        "hyperparameters": {"n_epochs": 2, "batch_size": 4}}).json()

    worker = Worker(app.state.db, lease_seconds=10)
    started = time.monotonic()
    assert worker.run_once() is True  # the runner subprocess reads TEMPERING_DATABASE_URL from the env
    assert worker.run_once() is False  # nothing left
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth).json()
    assert done["status"] == "succeeded", done["error"]
    assert done["fine_tuned_model"].startswith(f"ft:{TINY_ID}:pg:") and done["trained_tokens"] > 0
    assert done["hyperparameters"]["n_epochs"] == 2
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=auth, params={"limit": 100}).json()
    assert events["data"][0]["message"] == "The job has successfully completed"
    steps = [e["data"]["step"] for e in events["data"] if e["type"] == "metrics" and "train_loss" in e["data"]]
    assert steps and sorted(steps) == list(range(1, max(steps) + 1))
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=auth).json()["data"]
    assert [c["step_number"] for c in checkpoints] == [10, 5] and checkpoints[0]["metrics"]
    results = client.get(f"/v1/files/{done['result_files'][0]}/content", headers=auth).text
    assert results.startswith("step,train_loss")
    with app.state.db.session(write=False) as session:
        from tempering.store.models import Job

        row = session.get(Job, job["id"])
        assert row.worker_id is None and row.attempts == 1
    print(f"job ran in {time.monotonic() - started:.1f}s")
    app.state.db.dispose()


def test_administrators_demoting_each_other_at_once_leave_one(postgres_url):
    """Two administrators, each taking the other's standing in the same instant: the second waits for the
    first's transaction (the enabled administrators' rows are locked), then finds itself the last one and is
    refused. Without the lock both would see the other still standing and the server would have none."""
    import threading
    from types import SimpleNamespace

    from sqlalchemy import select

    from tempering.errors import TemperingError
    from tempering.services import accounts
    from tempering.store.db import Database
    from tempering.store.models import User

    db = Database(postgres_url)
    db.migrate()
    try:
        with db.session() as session:
            ids = [accounts.create_user(session, name, is_admin=True)[0].id for name in ("ann", "bob")]
        first_flushed, outcome = threading.Event(), {}

        def demote(me: str, other: str, hold: float) -> None:
            try:
                with db.session() as session:
                    accounts.update_user(session, session.get(User, other), SimpleNamespace(
                        user_id=me, project_id=None, key_id=None, address=None),
                                         is_admin=False)
                    first_flushed.set()
                    time.sleep(hold)  # still uncommitted while the other one tries
                outcome[me] = "done"
            except TemperingError as exc:
                outcome[me] = exc.code

        ann = threading.Thread(target=demote, args=(ids[0], ids[1], 1.0))
        ann.start()
        assert first_flushed.wait(30)
        demote(ids[1], ids[0], 0.0)
        ann.join(30)
        assert outcome == {ids[0]: "done", ids[1]: "last_administrator"}
        with db.session(write=False) as session:
            assert session.scalars(select(User.username).where(User.is_admin.is_(True))).all() == ["ann"]
    finally:
        db.dispose()
