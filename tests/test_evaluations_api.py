"""On-demand evaluation through the API (issue 7): ``/v1/evaluations`` on a live server whose worker runs them
(a base model, a fine-tuned model against its base, a checkpoint; a file that cannot be read as asked fails
with the reason), the up-front checks and project isolation in-process, and the claim, alternation and
cancel rules of the workers with a fake executor (milliseconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import TINY_ID, app_and_two_projects
from test_api import TRAIN, server  # noqa: F401  (the live server fixture: one worker, the tiny model)

TERMINAL = ("succeeded", "failed", "cancelled")
FAST = {"max_examples": 4, "max_new_tokens": 8}


def _http(server) -> httpx.Client:  # noqa: F811
    client, _ = server
    return httpx.Client(base_url=str(client.base_url), headers={"Authorization": f"Bearer {client.api_key}"},
                        timeout=30)


def _wait(http: httpx.Client, path: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(path).json()
        if body["status"] in TERMINAL:
            return body
        time.sleep(0.3)
    raise AssertionError(f"{path} still {body['status']}")


def _upload(http: httpx.Client, content: bytes = TRAIN, name: str = "train.jsonl") -> str:
    response = http.post("/files", files={"file": (name, content)}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_base_fine_tuned_and_checkpoint_are_evaluated_on_an_uploaded_file(server):  # noqa: F811
    http = _http(server)
    file_id = _upload(http)
    base = http.post("/evaluations", json={"model": TINY_ID, "data_file": file_id, **FAST})
    assert base.status_code == 200, base.text
    assert base.json()["status"] == "queued" and base.json()["compare_model"] is None  # a base model: alone
    job = http.post("/fine_tuning/jobs", json={"model": TINY_ID, "training_file": file_id, "suffix": "ev",
                                               "hyperparameters": {"n_epochs": 2, "batch_size": 4}}).json()
    job = _wait(http, f"/fine_tuning/jobs/{job['id']}")
    assert job["status"] == "succeeded", job["error"]
    tuned = http.post("/evaluations", json={"model": job["fine_tuned_model"], "data_file": file_id, **FAST}).json()
    assert tuned["compare_model"] == TINY_ID  # "base" resolved
    checkpoint = http.post("/evaluations", json={"model": f"{job['fine_tuned_model']}:ckpt-step-5",
                                                 "data_file": file_id, "compare_model": None, **FAST}).json()

    done = _wait(http, f"/evaluations/{base.json()['id']}")
    assert done["status"] == "succeeded", done["error"]
    report = done["report"]
    assert report["data"] == f"train.jsonl ({file_id})"  # the upload's name, not the server's path
    assert report["candidate"]["model"] == TINY_ID and report["baseline"] is None and report["verdict"] is None
    assert report["candidate"]["loss"]["loss"] > 0 and report["n_generated"] == 4
    assert report["candidate"]["generation"]["text"]["rouge_l"] >= 0
    assert done["started_at"] and done["finished_at"] >= done["started_at"]

    done = _wait(http, f"/evaluations/{tuned['id']}")
    assert done["status"] == "succeeded", done["error"]
    report = done["report"]
    assert report["candidate"]["kind"] == "fine-tuned" and report["baseline"]["model"] == TINY_ID
    assert report["verdict"]["outcome"] in ("better", "no better", "worse") and report["verdict"]["message"]
    assert report["candidate"]["loss"]["loss"] < report["baseline"]["loss"]["loss"]  # trained on these examples

    done = _wait(http, f"/evaluations/{checkpoint['id']}")
    assert done["status"] == "succeeded", done["error"]
    assert done["report"]["candidate"]["kind"] == "checkpoint" and done["report"]["baseline"] is None

    first = http.get("/evaluations", params={"limit": 2}).json()  # newest first; pages neither skip nor repeat
    assert first["has_more"] and first["last_id"] == first["data"][-1]["id"]
    rest = http.get("/evaluations", params={"after": first["last_id"]}).json()
    ids = [e["id"] for e in first["data"] + rest["data"]]
    assert sorted(ids) == sorted([base.json()["id"], tuned["id"], checkpoint["id"]]) and not rest["has_more"]
    assert ids[-1] == base.json()["id"] or done["created_at"] == base.json()["created_at"]


def test_data_that_cannot_be_read_as_asked_fails_with_the_reason(server):  # noqa: F811
    http = _http(server)
    file_id = _upload(http, name="chat.jsonl")
    created = http.post("/evaluations", json={"model": TINY_ID, "data_file": file_id,
                                              "data_format": "prompt-completion", **FAST}).json()
    done = _wait(http, f"/evaluations/{created['id']}")
    assert done["status"] == "failed" and done["report"] is None
    error = done["error"]
    assert error["param"] == "data_file" and error["code"] == "invalid_data"
    assert f"chat.jsonl ({file_id})" in error["message"] and "line 1: no 'prompt' field" in error["message"]
    assert "artifacts" not in error["message"]  # no server path


def test_cli_eval_with_server_runs_on_the_servers_worker(server, tmp_path):  # noqa: F811
    client, _ = server
    data = tmp_path / "local.jsonl"
    data.write_bytes(TRAIN)
    env = {**os.environ, "TEMPERING_SERVER": str(client.base_url), "TEMPERING_API_KEY": client.api_key,
           "TEMPERING_HOME": str(tmp_path / "client-home")}  # nothing local: the server evaluates
    cli = [sys.executable, "-m", "tempering.cli.main", "eval"]
    done = subprocess.run([*cli, TINY_ID, "--data", data, "--train-data", data, "--max-examples", "2",
                           "--max-new-tokens", "4", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Created evaluation eval-" in done.stderr
    report = json.loads(done.stdout)
    assert report["data"].startswith("local.jsonl (file-") and report["n_generated"] == 2
    assert report["candidate"]["model"] == TINY_ID and report["baseline"] is None
    refused = subprocess.run([*cli, TINY_ID, "--data", data, "--compare", "no-such-model"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "no-such-model" in refused.stderr


# --- in-process: the checks made before anything is queued ----------------------------------------------


@pytest.fixture
def api(tempering_home, tiny_model):
    """The app without workers, a second project's key, and a fine-tuned model of the first project."""
    from sqlalchemy import select

    from tempering.store.models import Job, Project

    app, client, mine, theirs, file_id = app_and_two_projects(TRAIN)
    with app.state.db.session() as session:
        project = session.scalars(select(Project).where(Project.name == "default")).one()
        job = Job(project_id=project.id, model=TINY_ID, training_file=file_id, seed=1, config={},
                  status="succeeded", fine_tuned_model=f"ft:{TINY_ID}:x:abc123")
        session.add(job)
        session.flush()
        job.fine_tuned_model = f"ft:{TINY_ID}:x:{job.id.removeprefix('ftjob-')}"
        tuned = job.fine_tuned_model
    return client, mine, theirs, file_id, tuned


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_unknown_models_and_files_are_refused_naming_the_parameter(api):
    client, mine, _, file_id, _ = api
    post = lambda **body: client.post("/v1/evaluations", headers=mine, json=body)  # noqa: E731
    assert _error(post(model="no-such-model", data_file=file_id), 404)["param"] == "model"
    assert _error(post(model=TINY_ID, data_file="file-nothere"), 404)["param"] == "data_file"
    assert _error(post(model=f"ft:{TINY_ID}:x:nope", data_file=file_id), 404)["param"] == "model"
    assert _error(post(model=TINY_ID, data_file=file_id, compare_model="no-such-model"), 404)["param"] == \
        "compare_model"
    error = _error(post(model="no-such-model", data_file="file-nothere"), 404)  # every problem in one answer
    assert "file-nothere" in error["message"] and "no-such-model" in error["message"]
    # a checkpoint folder by path is the CLI's only; a run id with a path in it names nothing
    assert _error(post(model="/tmp", data_file=file_id), 404)["param"] == "model"
    assert _error(post(model=f"ft:{TINY_ID}:x:../../x@step-1", data_file=file_id), 404)["param"] == "model"
    assert _error(post(model=TINY_ID, data_file=file_id, max_examples=0), 400)["param"] == "max_examples"
    assert _error(post(model=TINY_ID, data_file=file_id, data_format="csv"), 400)["param"] == "data_format"
    assert _error(post(model=TINY_ID, data_file=file_id, train_file="file-nothere"), 404)["param"] == "train_file"
    assert client.get("/v1/evaluations", headers=mine).json()["data"] == []  # nothing was queued


def test_a_file_that_failed_its_checks_is_refused(api):
    client, mine, _, _, _ = api
    bad = client.post("/v1/files", headers=mine, files={"file": ("bad.jsonl", b"{not json}\n" * 12)},
                      data={"purpose": "fine-tune"})
    assert bad.status_code == 400
    bad_id = next(f["id"] for f in client.get("/v1/files", headers=mine).json()["data"] if f["status"] == "error")
    error = _error(client.post("/v1/evaluations", headers=mine, json={"model": TINY_ID, "data_file": bad_id}), 400)
    assert error["param"] == "data_file" and error["code"] == "invalid_file"


def test_projects_are_isolated(api):
    client, mine, theirs, file_id, tuned = api
    created = client.post("/v1/evaluations", headers=mine, json={"model": TINY_ID, "data_file": file_id})
    assert created.status_code == 200, created.text
    evaluation_id = created.json()["id"]
    assert _error(client.get(f"/v1/evaluations/{evaluation_id}", headers=theirs), 404)["param"] == "evaluation_id"
    assert client.get("/v1/evaluations", headers=theirs).json()["data"] == []
    assert _error(client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=theirs), 404)
    assert _error(client.post("/v1/evaluations", headers=theirs, json={"model": TINY_ID, "data_file": file_id}),
                  404)["param"] == "data_file"
    their_file = client.post("/v1/files", headers=theirs, files={"file": ("t.jsonl", TRAIN)},
                             data={"purpose": "fine-tune"}).json()["id"]
    for model in (tuned, f"{tuned}:ckpt-step-5", f"{tuned}@step-5"):  # another project's model and checkpoints
        response = client.post("/v1/evaluations", headers=theirs, json={"model": model, "data_file": their_file})
        assert _error(response, 404)["param"] == "model", model
    assert client.get(f"/v1/evaluations/{evaluation_id}", headers=mine).json()["status"] == "queued"


def test_cancel_a_waiting_evaluation(api):
    client, mine, _, file_id, _ = api
    evaluation_id = client.post("/v1/evaluations", headers=mine,
                                json={"model": TINY_ID, "data_file": file_id}).json()["id"]
    cancelled = client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=mine).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert _error(client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=mine), 400)["code"] == \
        "invalid_state"


def test_wire_formats_are_the_data_platforms():
    from typing import get_args

    from tempering.api.protocol_evaluations import DataFormat
    from tempering.data.formats import FORMATS

    assert get_args(DataFormat) == FORMATS


# --- workers: claims, alternation, cancel, crashes ------------------------------------------------------


try:  # a throwaway PostgreSQL server for the claim tests (skipped without its binaries)
    from postgres_fixture import postgres_server_fixture, postgres_url_fixture  # noqa: F401
except ImportError:
    pass


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tempering_home):
    """The queue's database: SQLite, and PostgreSQL (SKIP LOCKED) where tests/postgres_fixture.py can run one."""
    from tempering.settings import get_settings
    from tempering.store.db import Database
    from tempering.store.models import Project

    url = get_settings().database
    if request.param == "postgresql":
        try:
            url = request.getfixturevalue("postgres_url")
        except pytest.FixtureLookupError:
            pytest.skip("no PostgreSQL helper (tests/postgres_fixture.py)")
    database = Database(url)
    database.migrate()
    with database.session() as session:
        session.add(Project(id="proj_t", name="t"))
    yield database
    database.dispose()


def _add(db, *, jobs: int = 0, evaluations: int = 0) -> None:
    from tempering.store.models import Evaluation, Job

    with db.session() as session:
        for i in range(jobs):
            session.add(Job(project_id="proj_t", model="m", training_file="file-x", seed=i, config={},
                            status="queued", created_at=1000 + i))
        for i in range(evaluations):
            session.add(Evaluation(project_id="proj_t", model="m", data_file="file-x", options={}, status="queued",
                                   created_at=1000 + i))


class FakeExecutor:
    """Records what it starts; a process 'ends' at once (code 0, recording nothing) unless ``hold``."""

    def __init__(self, hold: bool = False):
        self.started, self.killed, self.hold = [], [], hold

    def start(self, job_id, worker_id, lease_seconds):
        self.started.append(job_id)
        return job_id

    def poll(self, handle):
        return self.wait(handle, 0)

    def wait(self, handle, timeout):
        if self.hold and handle not in self.killed:
            time.sleep(timeout)
            return None
        return -9 if handle in self.killed else 0

    def kill(self, handle):
        self.killed.append(handle)

    def describe(self, handle, code):
        return f"the fake process exited with code {code}"


def test_claims_take_each_evaluation_once_and_never_a_job(db):
    from tempering.jobs import queue
    from tempering.store.db import Database
    from tempering.store.models import Evaluation, Job

    _add(db, jobs=3, evaluations=20)
    claimed: list[str] = []

    def claimer(name: str) -> None:
        other = Database(db.url)  # its own engine, like a separate worker process
        while (work_id := queue.claim(other, name, 30, Evaluation)) is not None:
            claimed.append(work_id)
        other.dispose()

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 20 and len(set(claimed)) == 20 and all(c.startswith("eval-") for c in claimed)
    with db.session() as session:
        assert session.get(Evaluation, claimed[0]).attempts == 1
        assert all(j.worker_id is None for j in session.query(Job))  # jobs untouched


def test_an_evaluation_whose_worker_died_is_taken_over(db):
    from tempering.jobs import queue
    from tempering.store.models import Evaluation

    _add(db, evaluations=1)
    evaluation_id = queue.claim(db, "dead", 0.2, Evaluation)
    with db.session() as session:
        session.get(Evaluation, evaluation_id).status = "running"
    assert queue.claim(db, "alive", 30, Evaluation) is None  # the lease still holds
    time.sleep(0.3)
    assert queue.claim(db, "alive", 30, Evaluation) == evaluation_id
    assert not queue.heartbeat(db, evaluation_id, "dead", 30)  # the dead worker's heartbeat is refused


def test_a_worker_alternates_jobs_and_evaluations_and_fails_what_ends_without_a_result(db):
    from tempering.jobs.worker import Worker
    from tempering.store.models import Evaluation, Job

    _add(db, jobs=2, evaluations=2)
    executor = FakeExecutor()
    worker = Worker(db, lease_seconds=3, executor=executor, worker_id="w")
    while worker.run_once():
        pass
    assert [w.split("-")[0] for w in executor.started] == ["ftjob", "eval", "ftjob", "eval"]
    with db.session() as session:
        for row in [*session.query(Evaluation), *session.query(Job)]:
            assert row.status == "failed" and row.error["code"] == "internal_error" and row.finished_at
            assert row.error["message"] == "the fake process exited with code 0" and row.worker_id is None


def test_cancelling_a_running_evaluation_stops_its_process(db):
    from tempering.jobs import queue
    from tempering.jobs.worker import Worker
    from tempering.store.models import Evaluation

    _add(db, evaluations=1)
    executor = FakeExecutor(hold=True)
    worker = Worker(db, lease_seconds=0.3, executor=executor, worker_id="w")
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    while not executor.started:
        time.sleep(0.01)
    evaluation_id = executor.started[0]
    with db.session() as session:
        session.get(Evaluation, evaluation_id).status = "running"
    queue.request_stop(db, evaluation_id, "cancel")
    thread.join(timeout=10)
    assert executor.killed == [evaluation_id]
    with db.session() as session:
        row = session.get(Evaluation, evaluation_id)
        assert row.status == "cancelled" and row.error is None and row.worker_id is None


def test_the_process_message_names_an_evaluation():
    from tempering.jobs.executors import LocalProcessExecutor

    handle = subprocess.Popen([sys.executable, "-c", "pass", "eval-abc"])
    handle.wait()
    assert LocalProcessExecutor().describe(handle, -9) == ("the evaluation process was killed by SIGKILL (the "
                                                           "system ran out of memory, or an operator killed it)")
    assert LocalProcessExecutor().describe(handle, 3) == "the evaluation process exited with code 3"

