"""The REST API: the official ``openai`` SDK against a live ``tempering serve``, and the edges in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import openai
import pytest
from conftest import TINY_ID, chat_example
from live_server import live_server, register_model

from tempering.settings import reset_settings


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


TRAIN = _jsonl([chat_example(f"What color is item {i}?", f"Item {i} is {['red', 'blue'][i % 2]}.")
                for i in range(20)])


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """A live ``tempering serve`` (one worker) on a free loopback port, with the tiny model registered."""
    home = tmp_path_factory.mktemp("server-home")
    register_model(home, TINY_ID, tiny_model_dir)
    with live_server(home) as (url, key):
        assert key, "the server printed no admin key"
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0), home


def _wait(client, job_id: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status}")


def test_openai_sdk_drives_the_whole_flow(server):
    client, home = server
    uploaded = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    assert uploaded.status == "processed" and uploaded.bytes == len(TRAIN)
    assert not (home / "artifacts" / "files" / "train.jsonl").exists()  # stored under its id
    assert (home / "artifacts" / "files" / uploaded.id).read_bytes() == TRAIN

    job = client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=uploaded.id, suffix="sdk", seed=4,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}})
    assert job.status == "validating_files"
    job = _wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith(f"ft:{TINY_ID}:sdk:")
    assert job.trained_tokens > 0 and job.result_files
    assert job.hyperparameters.n_epochs == 2

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any(e.type == "metrics" and "train_loss" in (e.data or {}) for e in events)
    assert events[0].message == "The job has successfully completed"  # newest first
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [10, 5]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-10"

    results = client.files.content(job.result_files[0]).text
    assert results.startswith("step,train_loss,train_mean_token_accuracy,valid_loss")

    models = {m.id: m.owned_by for m in client.models.list().data}
    assert models["smollm2-135m-instruct"] == "tempering" and models[job.fine_tuned_model] == job.organization_id
    assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    assert [j.id for j in client.fine_tuning.jobs.list(limit=5).data][0] == job.id
    with pytest.raises(openai.BadRequestError) as refused:  # a chat model is continued as chat, refused up front
        client.fine_tuning.jobs.create(model=job.fine_tuned_model, training_file=uploaded.id,
                                       extra_body={"task": "classification"})
    assert refused.value.body["param"] == "task" and "is a chat model" in refused.value.body["message"]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=5).data][0] == job.id  # nothing was queued

    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    assert client.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(job.fine_tuned_model)


def test_errors_reach_the_sdk_as_its_exceptions(server):
    client, _ = server
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("bad.jsonl", b'{"messages": [}\n' * 12), purpose="fine-tune")
    assert "line 1" in bad.value.message and "invalid_json" in bad.value.message
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model=TINY_ID, training_file="file-nothere")
    uploaded = client.files.create(file=("ok.jsonl", TRAIN), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model=TINY_ID, training_file=uploaded.id,
                                       hyperparameters={"n_epochs": 0})
    assert bad.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="tk-wrong", max_retries=0).models.list()


def test_invalid_data_fails_in_validating_files_and_never_runs(server):
    client, _ = server
    rows = [chat_example(f"q{i}", "word " * (1500 if i == 3 else 2)) for i in range(12)]  # line 4: too long
    uploaded = client.files.create(file=("long.jsonl", _jsonl(rows)), purpose="fine-tune")
    job = _wait(client, client.fine_tuning.jobs.create(model=TINY_ID, training_file=uploaded.id).id)
    assert job.status == "failed" and job.error.code == "invalid_training_file"
    assert "line 4" in job.error.message and "too_long" in job.error.message
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data]
    assert not any(m.startswith("Fine-tuning started") for m in messages)
    assert job.trained_tokens is None


def test_cancel_a_running_job_keeps_its_checkpoint(server):
    client, home = server
    uploaded = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=TINY_ID, training_file=uploaded.id,
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    deadline = time.monotonic() + 60
    while client.fine_tuning.jobs.retrieve(job.id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    client.fine_tuning.jobs.cancel(job.id)
    job = _wait(client, job.id)
    assert job.status == "cancelled"
    run = home / "runs" / job.id.removeprefix("ftjob-")
    assert json.loads((run / "run.json").read_text())["status"] == "cancelled"
    assert any((p / "COMPLETE").exists() for p in (run / "checkpoints").iterdir())


def test_projects_are_isolated(tmp_path, tempering_home):
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.services.projects import project_key
    from tempering.settings import get_settings
    from tempering.store.models import Project

    app = create_app(get_settings(), workers=0)
    with app.state.db.session() as session:
        other = Project(name="other")
        session.add(other)
        session.flush()
        other_key = project_key(session, other.id, "other")
    client = TestClient(app)
    mine = {"Authorization": f"Bearer {app.state.initial_api_key}"}
    theirs = {"Authorization": f"Bearer {other_key}"}
    file_id = client.post("/v1/files", headers=mine, files={"file": ("t.jsonl", TRAIN)},
                          data={"purpose": "fine-tune"}).json()["id"]
    assert client.get(f"/v1/files/{file_id}", headers=theirs).status_code == 404
    assert client.get("/v1/files", headers=theirs).json()["data"] == []
    response = client.post("/v1/fine_tuning/jobs", headers=theirs, json={"model": TINY_ID, "training_file": file_id})
    assert response.status_code == 404 and response.json()["error"]["param"] == "training_file"
    assert client.get("/v1/files", headers={"Authorization": "Bearer nope"}).json()["error"]["code"] == "invalid_api_key"


def test_concurrent_claims_never_take_a_job_twice(tempering_home):
    from tempering.jobs import queue
    from tempering.settings import get_settings
    from tempering.store.db import Database
    from tempering.store.models import Job, Project

    db = Database(get_settings().database)
    db.migrate()
    with db.session() as session:
        project = Project(name="p", quotas={"concurrent_jobs": 30})  # every job may be held at once
        session.add(project)
        session.flush()
        for i in range(30):
            session.add(Job(project_id=project.id, model="m", training_file="file-x", seed=i, config={},
                            status="queued", created_at=1000 + i))
    first = [queue.claim(db, "solo", 30) for _ in range(3)]
    with db.session() as session:  # first come, first served
        assert [session.get(Job, j).seed for j in first] == [0, 1, 2]
    claimed: list[str] = list(first)

    def claimer(name: str) -> None:
        other = Database(get_settings().database)  # its own engine, like a separate worker process
        while (job_id := queue.claim(other, name, 30)) is not None:
            claimed.append(job_id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 30 and len(set(claimed)) == 30


def test_cli_server_mode_runs_the_job_on_the_server(server, tmp_path):
    client, home = server
    train = tmp_path / "train.jsonl"
    train.write_bytes(TRAIN)
    env = {**os.environ, "TEMPERING_SERVER": str(client.base_url), "TEMPERING_API_KEY": client.api_key,
           "TEMPERING_HOME": str(tmp_path / "client-home")}  # nothing local: the server does the work
    cli = [sys.executable, "-m", "tempering.cli.main"]
    tuned = subprocess.run([*cli, "tune", train, "--model", TINY_ID, "--epochs", "1", "--suffix", "remote",
                            "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert tuned.returncode == 0, tuned.stderr
    job = json.loads(tuned.stdout)
    assert job["status"] == "succeeded" and job["fine_tuned_model"].startswith(f"ft:{TINY_ID}:remote:")
    assert "Created job ftjob-" in tuned.stderr
    assert not (tmp_path / "client-home" / "runs").exists()
    listed = subprocess.run([*cli, "models", "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert job["fine_tuned_model"] in {m["id"] for m in json.loads(listed.stdout)}



def test_one_job_config_through_the_api_the_server_cli_and_the_local_cli(server, tmp_path):
    """LoRA rank, sequence length and warmup sent through the API train with exactly those values, and the same
    options through `tempering tune --server` and the local `tempering tune` store the same config."""
    client, home = server
    train = tmp_path / "train.jsonl"
    train.write_bytes(TRAIN)
    options = ["--model", TINY_ID, "--epochs", "1", "--lora-rank", "8", "--max-seq-length", "96",
               "--warmup-ratio", "0.2", "--suffix", "same", "--no-evaluate"]
    cli = [sys.executable, "-m", "tempering.cli.main", "tune", train, *options, "--json"]
    remote_env = {**os.environ, "TEMPERING_SERVER": str(client.base_url), "TEMPERING_API_KEY": client.api_key,
                  "TEMPERING_HOME": str(tmp_path / "client-home")}
    remote = subprocess.run(cli, env=remote_env, capture_output=True, text=True, timeout=300)
    assert remote.returncode == 0, remote.stderr
    local_env = {k: v for k, v in os.environ.items() if k not in ("TEMPERING_SERVER", "TEMPERING_API_KEY")}
    local = subprocess.run(cli, env={**local_env, "TEMPERING_HOME": str(home)}, capture_output=True, text=True,
                           timeout=300)
    assert local.returncode == 0, local.stderr

    def run_config(model_id: str) -> dict:
        run = json.loads((home / "runs" / model_id.rsplit(":", 1)[1] / "run.json").read_text())
        adapter = json.loads((home / "runs" / model_id.rsplit(":", 1)[1] / "model" / "adapter_config.json")
                             .read_text())
        assert adapter["r"] == 8 and run["config"]["lora"]["rank"] == 8
        return {k: v for k, v in run["config"].items() if k not in ("training_file", "validation_file", "seed")}

    through_server = run_config(json.loads(remote.stdout)["fine_tuned_model"])
    through_cli = run_config(json.loads(local.stdout)["model_id"])
    assert through_server["max_seq_length"] == 96 and through_server["warmup_ratio"] == 0.2
    assert through_server == through_cli

    api_job = client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=client.files.create(file=("t.jsonl", TRAIN), purpose="fine-tune").id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
        extra_body={"lora": {"rank": 8}, "max_seq_length": 96, "warmup_ratio": 0.2, "evaluate": False})
    done = _wait(client, api_job.id)
    assert done.status == "succeeded", done.error
    assert run_config(done.fine_tuned_model)["max_seq_length"] == 96

    with pytest.raises(openai.BadRequestError) as conflict:  # one place for hyperparameters, not two
        client.fine_tuning.jobs.create(model=TINY_ID, training_file=api_job.training_file,
                                       hyperparameters={"n_epochs": 1},
                                       method={"type": "supervised", "supervised": {"hyperparameters": {}}})
    assert "not both" in conflict.value.message
    with pytest.raises(openai.BadRequestError) as boolean:
        client.fine_tuning.jobs.create(model=TINY_ID, training_file=api_job.training_file,
                                       hyperparameters={"n_epochs": True})
    assert "n_epochs" in boolean.value.message


def test_cli_manages_users_members_and_keys(server, monkeypatch):
    """`tempering users` on the server's own database; `tempering projects` and `keys` over HTTP."""
    from typer.testing import CliRunner

    from tempering.cli.main import app

    client, home = server
    runner = CliRunner()
    monkeypatch.setenv("TEMPERING_HOME", str(home))
    reset_settings()
    created = runner.invoke(app, ["users", "create", "cli-dev"])
    assert created.exit_code == 0, created.output
    user_id = created.output.split("(")[1].split(")")[0]
    monkeypatch.setenv("TEMPERING_SERVER", str(client.base_url))
    monkeypatch.setenv("TEMPERING_API_KEY", client.api_key)
    added = runner.invoke(app, ["projects", "add-member", user_id, "--role", "ai_developer"])
    assert added.exit_code == 0 and "ai_developer" in added.output, added.output
    listed = runner.invoke(app, ["projects", "members", "--json"])
    assert {m["username"]: m["role"] for m in json.loads(listed.output)}["cli-dev"] == "ai_developer"
    key = json.loads(runner.invoke(app, ["keys", "create", "ci", "--role", "reader", "--json"]).output)
    assert key["value"].startswith("tk-") and key["role"] == "reader"
    keys = json.loads(runner.invoke(app, ["keys", "list", "--json"]).output)
    assert key["id"] in {k["id"] for k in keys} and all("value" not in k or k["value"] is None for k in keys)
    assert runner.invoke(app, ["keys", "revoke", key["id"]]).exit_code == 0
    refused = runner.invoke(app, ["projects", "list"], env={"TEMPERING_API_KEY": key["value"]})
    assert refused.exit_code != 0 and "401" in refused.output

    [hub] = json.loads(runner.invoke(app, ["hubs", "list", "--json"]).output)
    assert runner.invoke(app, ["hubs", "secret", hub["id"], "moderation"], input="sk-x\n").exit_code == 0
    shown = json.loads(runner.invoke(app, ["hubs", "show", hub["id"]]).output)
    assert shown["secrets"] == ["moderation"] and "sk-x" not in json.dumps(shown)
    quotas = runner.invoke(app, ["hubs", "set", hub["id"], "default_quotas", '{"deployments": 8}'])
    assert quotas.exit_code == 0 and json.loads(quotas.output)["default_quotas"] == {"deployments": 8}, quotas.output
    bad = runner.invoke(app, ["hubs", "set", hub["id"], "content_safety", '{"backend": "vllm"}'])
    assert bad.exit_code != 0 and "settings.content_safety.backend" in bad.output, bad.output
    assert "default_quotas" not in json.loads(runner.invoke(app, ["hubs", "set", hub["id"], "default_quotas",
                                                                  "null"]).output)
    odd = runner.invoke(app, ["hubs", "secret", hub["id"], "../../projects"], input="x\n")
    assert odd.exit_code != 0 and "404" in odd.output, odd.output  # quoted: a name, never a path
    assert runner.invoke(app, ["hubs", "delete-secret", hub["id"], "moderation"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["hubs", "show", hub["id"]]).output)["secrets"] == []
    reset_settings()
