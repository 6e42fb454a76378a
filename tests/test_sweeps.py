"""Sweeps: N trials as child fine-tuning jobs run by a real worker (the tiny model, a few steps each), Optuna
choosing and pruning them; the requests' validation with the field named; permissions; the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import TINY_ID, app_and_two_projects
from test_api import TRAIN, server  # noqa: F401  (the live server fixture: one worker, the tiny model)

SPACE = [{"path": "hyperparameters.learning_rate_multiplier", "type": "float", "low": 0.0001, "high": 5.0,
          "log": True},
         {"path": "hyperparameters.n_epochs", "type": "categorical", "choices": [2, 12]}]
BASE = {"model": TINY_ID, "seed": 3, "evaluate": False, "hyperparameters": {"batch_size": 4}}


try:  # a throwaway PostgreSQL server for the driver's test there (skipped without its binaries)
    from postgres_fixture import postgres_server_fixture, postgres_url_fixture  # noqa: F401
except ImportError:
    pass


@pytest.fixture
def api(tempering_home, tiny_model, request):
    """The app without workers (the test runs its own), its admin key, another project's key, a file. On
    PostgreSQL when the test is marked so (``@pytest.mark.parametrize("api", ["postgresql"], indirect=True)``)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        try:
            url = request.getfixturevalue("postgres_url")
        except pytest.FixtureLookupError:
            pytest.skip("no PostgreSQL helper (tests/postgres_fixture.py)")
        request.getfixturevalue("monkeypatch").setenv("TEMPERING_DATABASE_URL", url)
        from tempering.settings import reset_settings

        reset_settings()
    return app_and_two_projects(TRAIN)


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _run_worker_until(app, client, headers, sweep_id: str, timeout: float = 150) -> dict:
    from tempering.jobs.executors import LocalProcessExecutor
    from tempering.jobs.worker import Worker
    from tempering.services.sweeps import advance_sweeps

    worker = Worker(app.state.db, lease_seconds=1.5, poll_seconds=0.1, executor=LocalProcessExecutor(),
                    between_jobs=advance_sweeps)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sweep = client.get(f"/v1/fine_tuning/sweeps/{sweep_id}", headers=headers).json()
            if sweep["status"] in ("succeeded", "failed", "cancelled"):
                return sweep
            time.sleep(0.2)
        raise AssertionError(f"sweep still {sweep['status']}: {sweep}")
    finally:
        worker.stop()
        thread.join(timeout=60)


def test_a_sweep_runs_its_trials_as_jobs_prunes_a_bad_one_and_keeps_the_best(api):
    app, client, mine, _, file_id = api
    body = {**BASE, "training_file": file_id, "n_trials": 3, "search_space": SPACE,
            "pruning": {"n_startup_trials": 2},
            # two sound trials, then one whose learning rate is far too small: at epoch 1 its validation loss
            # is above both finished trials' (the median), so the MedianPruner stops it, 11 epochs early
            "initial_trials": [{"hyperparameters.learning_rate_multiplier": 3.0, "hyperparameters.n_epochs": 2},
                               {"hyperparameters.learning_rate_multiplier": 1.0, "hyperparameters.n_epochs": 2},
                               {"hyperparameters.learning_rate_multiplier": 0.0001,
                                "hyperparameters.n_epochs": 12}]}
    created = client.post("/v1/fine_tuning/sweeps", headers=mine, json=body)
    assert created.status_code == 200, created.text
    sweep = created.json()
    assert sweep["object"] == "fine_tuning.sweep" and sweep["id"].startswith("sweep-")
    assert sweep["status"] == "running" and len(sweep["trials"]) == 1  # one at a time (max_concurrent_trials)
    first_job = sweep["trials"][0]["fine_tuning_job_id"]
    job = client.get(f"/v1/fine_tuning/jobs/{first_job}", headers=mine).json()
    assert job["hyperparameters"]["n_epochs"] == 2 and job["metadata"]["sweep_id"] == sweep["id"]

    # a server restart in between: the sweep's state is in the database alone, and a new process's worker
    # (its driver) carries on from the rows
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.settings import get_settings

    app.state.db.dispose()
    app = create_app(get_settings(), workers=0)
    client = TestClient(app)
    done = _run_worker_until(app, client, mine, sweep["id"])
    assert done["status"] == "succeeded", done
    trials = done["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"], trials
    pruned_job = client.get(f"/v1/fine_tuning/jobs/{trials[2]['fine_tuning_job_id']}", headers=mine).json()
    assert pruned_job["status"] == "cancelled"  # through the jobs' own cancel path (the worker waited for it)
    assert len(trials[2]["intermediate_values"]) < 12
    sound = trials[:2]
    best = min(sound, key=lambda t: t["objective"])
    assert done["best_trial"] == best["number"] and done["fine_tuned_model"] == best["fine_tuned_model"]
    assert all(t["objective"] == t["intermediate_values"]["2"] for t in sound)
    events = client.get(f"/v1/fine_tuning/jobs/{trials[2]['fine_tuning_job_id']}/events?limit=100",
                        headers=mine).json()["data"]
    assert any(e["message"] == "Cancel requested" for e in events)
    listed = client.get("/v1/fine_tuning/sweeps", headers=mine).json()["data"]
    assert [s["id"] for s in listed] == [sweep["id"]]


BAD = [
    ({"search_space": [{"path": "hyperparameters.nope", "type": "float", "low": 0.1, "high": 1}]},
     "search_space[0].path", "not a field of the job config"),
    ({"search_space": [{"path": "lora", "type": "categorical", "choices": [1]}]},
     "search_space[0].path", "group of fields"),
    ({"search_space": [{"path": "model", "type": "categorical", "choices": ["x"]}]},
     "search_space[0].path", "cannot be searched"),
    ({"search_space": [{"path": "hyperparameters.learning_rate_multiplier", "type": "float", "low": 2, "high": 1}]},
     "search_space[0].high", "must not be below low"),
    ({"search_space": [{"path": "hyperparameters.learning_rate_multiplier", "type": "float", "low": 0, "high": 1,
                        "log": True}]}, "search_space[0].low", "log-scale"),
    ({"search_space": [{"path": "hyperparameters.learning_rate_multiplier", "type": "float", "low": 1,
                        "high": 20}]}, "search_space[0].high", "learning_rate_multiplier must be > 0 and <= 10"),
    ({"search_space": [{"path": "hyperparameters.n_epochs", "type": "int", "low": 1, "high": 2},
                       {"path": "lora.rank", "type": "categorical", "choices": [8, 0]}]},
     "search_space[1].choices[1]", "lora.rank"),
    ({"search_space": [{"path": "lora.rank", "type": "int"}]}, "search_space[0].low", "needs low"),
    ({"search_space": []}, "search_space", "at least one parameter"),
    ({"n_trials": 51}, "n_trials", "50"),
    ({"n_trials": 2, "initial_trials": [{"lora.rank": 8}, {"lora.rank": 16}, {"lora.rank": 32}]},
     "initial_trials", "more than n_trials"),
    ({"initial_trials": [{"lora.alpha": 8}]}, "initial_trials[0]", "not in the search space"),
    ({"initial_trials": [{"lora.rank": 12}]}, "initial_trials[0]", "lora.rank=12 is outside"),
    ({"search_space": [{"path": "hyperparameters.learning_rate_multiplier", "type": "float", "low": 0.5,
                        "high": 2}], "initial_trials": [{"hyperparameters.learning_rate_multiplier": 3.0}]},
     "initial_trials[0]", "outside its range"),
]


def test_bad_sweeps_are_refused_naming_the_field(api):
    from tempering.store.models import Job, Sweep

    app, client, mine, _, file_id = api
    for change, param, words in BAD:
        error = _error(client.post("/v1/fine_tuning/sweeps", headers=mine,
                                   json={**BASE, "training_file": file_id, **change}), 400)
        assert error["param"] == param and words in error["message"], (change, error)
    with app.state.db.session(write=False) as session:  # nothing half-written
        assert session.query(Sweep).count() == 0 and session.query(Job).count() == 0


def test_a_whole_bad_space_is_reported_at_once(api):
    _, client, mine, _, file_id = api
    space = [{"path": "hyperparameters.nope", "type": "float", "low": 0.1, "high": 1},
             {"path": "lora.rank", "type": "int", "low": 8, "high": 4}]
    error = _error(client.post("/v1/fine_tuning/sweeps", headers=mine,
                               json={**BASE, "training_file": file_id, "search_space": space}), 400)
    assert "search_space[0].path" in error["message"] and "search_space[1].high" in error["message"]


def test_the_default_space_and_seeded_choices(api):
    """Without a space the sweep searches learning-rate multiplier, epochs and LoRA rank; the same seed picks
    the same first trial, another seed another."""
    _, client, mine, _, file_id = api

    def first_trial(seed):
        body = {**BASE, "seed": seed, "training_file": file_id, "n_trials": 2}
        sweep = client.post("/v1/fine_tuning/sweeps", headers=mine, json=body).json()
        return sweep, sweep["trials"][0]["parameters"]

    sweep, params = first_trial(11)
    assert [s["path"] for s in sweep["search_space"]] == ["hyperparameters.learning_rate_multiplier",
                                                         "hyperparameters.n_epochs", "lora.rank"]
    assert set(params) == {s["path"] for s in sweep["search_space"]}
    assert 0.2 <= params["hyperparameters.learning_rate_multiplier"] <= 5 and params["lora.rank"] in (8, 16, 32)
    job = client.get(f"/v1/fine_tuning/jobs/{sweep['trials'][0]['fine_tuning_job_id']}", headers=mine).json()
    assert job["hyperparameters"]["n_epochs"] == params["hyperparameters.n_epochs"] and job["seed"] == 11
    assert first_trial(11)[1] == params and first_trial(12)[1] != params
    cancelled = client.post(f"/v1/fine_tuning/sweeps/{sweep['id']}/cancel", headers=mine).json()
    assert cancelled["status"] == "cancelled" and cancelled["trials"][0]["state"] == "cancelled"
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=mine).json()["status"] == "cancelled"
    assert _error(client.post(f"/v1/fine_tuning/sweeps/{sweep['id']}/cancel", headers=mine), 400)["code"] == \
        "invalid_state"


def test_readers_cannot_create_sweeps_and_other_projects_cannot_see_them(api):
    from tempering.services.projects import project_key
    from tempering.store.models import Project

    app, client, mine, theirs, file_id = api
    with app.state.db.session() as session:
        project = session.query(Project).filter(Project.name == "default").one()
        reader = {"Authorization": f"Bearer {project_key(session, project.id, 'reader', 'reader')}"}
    body = {**BASE, "training_file": file_id, "n_trials": 2}
    assert _error(client.post("/v1/fine_tuning/sweeps", headers=reader, json=body), 403)
    sweep = client.post("/v1/fine_tuning/sweeps", headers=mine, json=body).json()
    assert client.get(f"/v1/fine_tuning/sweeps/{sweep['id']}", headers=reader).status_code == 200
    assert _error(client.post(f"/v1/fine_tuning/sweeps/{sweep['id']}/cancel", headers=reader), 403)
    for method, path in (("GET", ""), ("POST", "/cancel")):
        error = _error(client.request(method, f"/v1/fine_tuning/sweeps/{sweep['id']}{path}", headers=theirs), 404)
        assert error["param"] == "sweep_id"
    assert client.get("/v1/fine_tuning/sweeps", headers=theirs).json()["data"] == []
    # their files are not ours to sweep over either
    assert _error(client.post("/v1/fine_tuning/sweeps", headers=theirs, json=body), 404)["param"] == "training_file"


def test_a_trial_counts_against_the_daily_token_quota(api):
    from tempering.store.models import Project

    app, client, mine, _, file_id = api
    with app.state.db.session() as session:
        session.query(Project).filter(Project.name == "default").one().quotas = {"trained_tokens_per_day": 2000}
    space = [{"path": "hyperparameters.n_epochs", "type": "int", "low": 1, "high": 50}]
    error = _error(client.post("/v1/fine_tuning/sweeps", headers=mine,
                               json={**BASE, "training_file": file_id, "search_space": space}), 400)
    assert error["code"] == "quota_exceeded" and error["param"] == "search_space"


def _cli(*args, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "tempering.cli.main", *map(str, args)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603


def test_the_cli_runs_a_sweep_on_the_server_and_prints_the_best_model(server, tmp_path):  # noqa: F811
    client, _ = server
    train = tmp_path / "train.jsonl"
    train.write_bytes(TRAIN)
    space = tmp_path / "space.json"
    space.write_text(json.dumps([{"path": "lora.rank", "type": "categorical", "choices": [4, 8]}]))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"evaluate": False, "hyperparameters": {"n_epochs": 1, "batch_size": 4}}))
    env = {**os.environ, "TEMPERING_SERVER": str(client.base_url), "TEMPERING_API_KEY": client.api_key,
           "TEMPERING_HOME": str(tmp_path / "client-home")}  # nothing local: the server's workers train
    done = _cli("sweep", train, "--model", TINY_ID, "--trials", "1", "--space", space, "--config", config,
                "--seed", "5", "--no-pruning", env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Created sweep sweep-" in done.stderr and "complete" in done.stderr and "★" in done.stderr
    model = done.stdout.strip()
    assert model.startswith(f"ft:{TINY_ID}:")
    shown = _cli("sweeps", "list", "--json", env=env)
    sweep = json.loads(shown.stdout)[0]
    assert sweep["status"] == "succeeded" and sweep["fine_tuned_model"] == model
    assert [t["parameters"]["lora.rank"] in (4, 8) for t in sweep["trials"]] == [True]

    space.write_text(json.dumps([{"path": "lora.rnak", "type": "categorical", "choices": [4]}]))
    bad = _cli("sweep", train, "--model", TINY_ID, "--space", space, env=env)
    assert bad.returncode == 1 and "search_space[0].path" in bad.stderr and "lora.rnak" in bad.stderr
    alone = _cli("sweep", train, env={**env, "TEMPERING_SERVER": ""})
    assert alone.returncode == 1 and "--server" in alone.stderr


def test_the_portal_shows_a_sweeps_trials_side_by_side_with_the_best_marked(api):
    from portal_fixtures import admin, csrf_of

    from tempering.store.models import Job, Project, Sweep, SweepTrial

    app, client, _, _, file_id = api
    with app.state.db.session() as s:
        project_id = s.query(Project).filter(Project.name == "default").one().id
        sweep = Sweep(project_id=project_id, model=TINY_ID, training_file=file_id, seed=1, config={},
                      search_space=SPACE, objective={"metric": "valid_loss"}, pruning={}, n_trials=3,
                      status="running", best_trial=None)
        s.add(sweep)
        s.flush()
        for number, (state, value, lr) in enumerate([("complete", 1.25, 3.0), ("pruned", None, 0.0001),
                                                     ("running", None, 1.5)]):
            job = Job(project_id=project_id, model=TINY_ID, training_file=file_id, seed=1, config={},
                      status="succeeded" if state == "complete" else "running",
                      fine_tuned_model=f"ft:{TINY_ID}::t{number}" if state == "complete" else None)
            s.add(job)
            s.flush()
            s.add(SweepTrial(sweep_id=sweep.id, number=number, job_id=job.id, state=state, value=value,
                             params={"hyperparameters.learning_rate_multiplier": lr, "hyperparameters.n_epochs": 2},
                             intermediate={"1": 1.5, "2": 1.25} if state == "complete" else {"1": 9.0}))
        sweep_id = sweep.id
    with client:
        admin(client, app)
        listed = client.get("/jobs")
        assert f'href="/sweeps/{sweep_id}"' in listed.text and "1/3" not in listed.text and "3/3" in listed.text
        shown = client.get(f"/sweeps/{sweep_id}")
        assert shown.status_code == 200
        rows = shown.text.split('<table id="trials">')[1].split("</table>")[0].split("<tr")[2:]
        assert len(rows) == 3 and "★" not in shown.text  # running: no best yet
        assert "pruned" in rows[1] and "0.0001" in rows[1] and "9.0000" in rows[1]
        assert "hyperparameters.learning_rate_multiplier" in shown.text and "1.2500" in rows[0]
        with app.state.db.session() as s:
            s.get(Sweep, sweep_id).best_trial = 0
            s.get(Sweep, sweep_id).status = "succeeded"
        shown = client.get(f"/sweeps/{sweep_id}")
        best = shown.text.split('<tr class="best">')[1].split("</tr>")[0]
        assert "★" in best and f"ft:{TINY_ID}::t0" in best and "Cancel sweep" not in shown.text
        with app.state.db.session() as s:
            s.get(Sweep, sweep_id).status = "running"
        page = client.get(f"/sweeps/{sweep_id}")
        cancelled = client.post(f"/sweeps/{sweep_id}/cancel", data={"csrf_token": csrf_of(page.text)})
        assert cancelled.status_code == 200 and "chip-cancelled" in cancelled.text
        assert client.get("/sweeps/sweep-nope").status_code == 404


def _finish_job(db, job_id: str, status: str, losses: list[float]) -> None:
    """What a worker's runner records: per-epoch checkpoints with their validation loss, then the end."""
    from tempering.store.models import Job, JobCheckpoint

    with db.session() as s:
        for epoch, loss in enumerate(losses, start=1):
            s.add(JobCheckpoint(job_id=job_id, step_number=5 * epoch, metrics={"valid_loss": loss},
                                fine_tuned_model_checkpoint=f"x:ckpt-step-{5 * epoch}"))
        job = s.get(Job, job_id)
        job.status, job.fine_tuned_model = status, (f"ft:{TINY_ID}::{job_id[-6:]}" if status == "succeeded" else None)


@pytest.mark.parametrize("api", ["sqlite", "postgresql"], indirect=True)
def test_the_driver_settles_trials_from_their_jobs_and_fails_the_sweep_when_a_trial_cannot_start(api):
    """No training: jobs are ended by hand as a runner would, and the driver (as a worker calls it) moves on —
    the next trial asked, a diverged one failed, then the sweep failed naming why the next could not start."""
    from tempering.services.sweeps import advance_sweeps
    from tempering.store.models import File

    app, client, mine, _, file_id = api
    db = app.state.db
    body = {**BASE, "training_file": file_id, "n_trials": 3, "pruning": {"enabled": False},
            "search_space": [{"path": "lora.rank", "type": "categorical", "choices": [4, 8]}]}
    sweep = client.post("/v1/fine_tuning/sweeps", headers=mine, json=body).json()
    url = f"/v1/fine_tuning/sweeps/{sweep['id']}"
    _finish_job(db, sweep["trials"][0]["fine_tuning_job_id"], "succeeded", [2.0, 1.5, 1.7])
    from tempering.store.models import JobEvent

    with db.session() as s:  # the job kept epoch 2's checkpoint as its model (best-checkpoint selection)
        s.add(JobEvent(job_id=sweep["trials"][0]["fine_tuning_job_id"], level="info", type="message",
                       message="Kept the checkpoint of epoch 2", data={"best_epoch": 2, "best_step": 10}))
    assert advance_sweeps(db) == 1
    now = client.get(url, headers=mine).json()
    assert [t["state"] for t in now["trials"]] == ["complete", "running"] and now["trials"][0]["objective"] == 1.5
    assert now["trials"][0]["intermediate_values"] == {"1": 2.0, "2": 1.5, "3": 1.7}
    _finish_job(db, now["trials"][1]["fine_tuning_job_id"], "succeeded", [])  # no validation value
    with db.session() as s:
        s.get(File, file_id).deleted = True  # the data is gone: the third trial cannot be created
    advance_sweeps(db)
    done = client.get(url, headers=mine).json()
    assert [t["state"] for t in done["trials"]] == ["complete", "failed"]
    assert done["status"] == "failed" and done["error"]["param"] == "training_file"
    assert "trial 2 could not start" in done["error"]["message"]
    assert advance_sweeps(db) == 0  # a finished sweep is left alone


def test_a_sweep_whose_trials_all_fail_says_so(api):
    from tempering.services.sweeps import advance_sweeps

    app, client, mine, _, file_id = api
    body = {**BASE, "training_file": file_id, "n_trials": 1,
            "search_space": [{"path": "lora.rank", "type": "categorical", "choices": [4]}]}
    sweep = client.post("/v1/fine_tuning/sweeps", headers=mine, json=body).json()
    _finish_job(app.state.db, sweep["trials"][0]["fine_tuning_job_id"], "failed", [])
    advance_sweeps(app.state.db)
    done = client.get(f"/v1/fine_tuning/sweeps/{sweep['id']}", headers=mine).json()
    assert done["status"] == "failed" and done["error"]["code"] == "no_trial_completed"
    assert "1 failed" in done["error"]["message"] and done["fine_tuned_model"] is None


def test_a_diverged_trial_is_pruned_at_once_and_its_job_asked_to_stop(api):
    from tempering.services.sweeps import advance_sweeps
    from tempering.store.models import Job, JobCheckpoint

    app, client, mine, _, file_id = api
    body = {**BASE, "training_file": file_id, "n_trials": 1,
            "search_space": [{"path": "lora.rank", "type": "categorical", "choices": [4]}]}
    sweep = client.post("/v1/fine_tuning/sweeps", headers=mine, json=body).json()
    job_id = sweep["trials"][0]["fine_tuning_job_id"]
    with app.state.db.session() as s:  # running on a worker, its first epoch's loss not a number (SQLite keeps NaN)
        s.get(Job, job_id).status, s.get(Job, job_id).worker_id = "running", "w"
        s.add(JobCheckpoint(job_id=job_id, step_number=5, metrics={"valid_loss": float("nan")},
                            fine_tuned_model_checkpoint="x:ckpt-step-5"))
    advance_sweeps(app.state.db)
    done = client.get(f"/v1/fine_tuning/sweeps/{sweep['id']}", headers=mine).json()
    assert done["trials"][0]["state"] == "pruned" and done["trials"][0]["intermediate_values"] == {"1": None}
    assert done["status"] == "failed" and "1 pruned" in done["error"]["message"]
    with app.state.db.session(write=False) as s:
        assert s.get(Job, job_id).stop_requested == "cancel"  # the runner stops at its next step


def test_a_trial_whose_job_ran_to_its_end_is_complete_however_its_curve_compares(api):
    """The driver may first see a trial after its job has finished (a short job, a busy driver): it ran every
    epoch, so it is complete with its objective, never "pruned" (nor its finished job cancelled)."""
    from tempering.services.sweeps import advance_sweeps
    from tempering.store.models import Job

    app, client, mine, _, file_id = api
    db = app.state.db
    body = {**BASE, "training_file": file_id, "n_trials": 3, "pruning": {"n_startup_trials": 2},
            "search_space": [{"path": "lora.rank", "type": "categorical", "choices": [4, 8]}]}
    sweep = client.post("/v1/fine_tuning/sweeps", headers=mine, json=body).json()
    url = f"/v1/fine_tuning/sweeps/{sweep['id']}"
    for losses in ([1.0, 0.9], [1.2, 1.1]):
        _finish_job(db, client.get(url, headers=mine).json()["trials"][-1]["fine_tuning_job_id"], "succeeded",
                    losses)
        advance_sweeps(db)
    last = client.get(url, headers=mine).json()["trials"][-1]["fine_tuning_job_id"]
    _finish_job(db, last, "succeeded", [5.0, 4.0])  # above the median at both epochs
    advance_sweeps(db)
    done = client.get(url, headers=mine).json()
    assert [(t["state"], t["objective"]) for t in done["trials"]] == [("complete", 0.9), ("complete", 1.1),
                                                                      ("complete", 4.0)], done["trials"]
    assert done["status"] == "succeeded" and done["best_trial"] == 0
    with db.session(write=False) as s:
        assert s.get(Job, last).status == "succeeded" and s.get(Job, last).stop_requested is None
