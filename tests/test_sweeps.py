"""Sweeps: N trials as child fine-tuning jobs run by a real worker (the tiny model, a few steps each), Optuna
choosing and pruning them; the requests' validation with the field named; permissions; the CLI."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import TINY_ID
from test_api import TRAIN

SPACE = [{"path": "hyperparameters.learning_rate_multiplier", "type": "float", "low": 0.0001, "high": 5.0,
          "log": True},
         {"path": "hyperparameters.n_epochs", "type": "categorical", "choices": [2, 12]}]
BASE = {"model": TINY_ID, "seed": 3, "evaluate": False, "hyperparameters": {"batch_size": 4}}


@pytest.fixture
def api(tempering_home, tiny_model):
    """The app without workers (the test runs its own), its admin key, another project's key, a file."""
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.services.projects import project_key
    from tempering.settings import get_settings
    from tempering.store.models import Project

    app = create_app(get_settings(), workers=0)
    client = TestClient(app)
    mine = {"Authorization": f"Bearer {app.state.initial_api_key}"}
    file_id = client.post("/v1/files", headers=mine, files={"file": ("t.jsonl", TRAIN)},
                          data={"purpose": "fine-tune"}).json()["id"]
    with app.state.db.session() as session:
        other = Project(name="other")
        session.add(other)
        session.flush()
        theirs = {"Authorization": f"Bearer {project_key(session, other.id, 'other')}"}
    return app, client, mine, theirs, file_id


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
