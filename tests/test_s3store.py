"""The shared artifact store against a real S3-compatible server (SeaweedFS, ``s3_fixture``): objects are
published whole with their marker last and pulled only once complete, checksums are checked, the cache is
bounded; a job killed on one "machine" is taken over on another sharing only the database and the bucket and
ends with the same adapter as an uninterrupted run; a server with an empty home serves a model trained
elsewhere; a backup, wiped platform and restore serves the model again. Skipped without the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from conftest import TINY_ID, chat_example
from s3_fixture import s3_env_fixture, s3_server_fixture  # noqa: F401  (the fixtures)
from safetensors.torch import load_file
from test_api import _wait

from tempering.settings import get_settings, reset_settings
from tempering.store import objects
from tempering.store.models import run_id_of

TRAIN = "".join(json.dumps(chat_example(f"Name number {i}.", f"Number {i} is {i * 11}.")) + "\n"
                for i in range(12)).encode()


def _switch_home(monkeypatch, home: Path) -> None:
    monkeypatch.setenv("TEMPERING_HOME", str(home))
    reset_settings()


def test_folders_are_published_marker_last_and_pulled_only_when_complete(s3_env, tempering_home, tmp_path,
                                                                         monkeypatch):
    folder = get_settings().runs_dir / "abc" / "checkpoints" / "step-000003"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(300_000))
    (folder / "metrics.json").write_text('{"step": 3}')
    (folder / "COMPLETE").write_text("ok\n")
    store = objects.shared_store()
    prefix = "runs/abc/checkpoints/step-000003/"
    objects.publish_folder(folder, "COMPLETE")
    assert {o.key for o in store.list(prefix)} == {prefix + n for n in ("adapter_model.safetensors",
                                                                         "metrics.json", "COMPLETE")}
    store.put_bytes("runs/abc/checkpoints/step-000004/metrics.json", b"{}")  # a writer killed before its marker

    _switch_home(monkeypatch, tmp_path / "other-machine")
    runs = get_settings().runs_dir
    assert objects.remote_markers(runs / "abc" / "checkpoints", "COMPLETE") == ["step-000003"]
    assert not objects.pull_folder(runs / "abc" / "checkpoints" / "step-000004", "COMPLETE")
    assert not (runs / "abc" / "checkpoints" / "step-000004").exists()
    assert objects.pull_folder(runs / "abc" / "checkpoints" / "step-000003", "COMPLETE")
    pulled = runs / "abc" / "checkpoints" / "step-000003" / "adapter_model.safetensors"
    assert pulled.read_bytes() == (folder / "adapter_model.safetensors").read_bytes()

    from tempering.train.checkpoint import latest_checkpoint

    shutil.rmtree(runs)
    assert latest_checkpoint(runs / "abc").name == "step-000003"  # found in the bucket, pulled

    # a changed object whose bytes no longer match its recorded sha256 is refused, and nothing is left
    store.put_file(prefix + "metrics.json", folder / "metrics.json", sha256="0" * 64)
    with pytest.raises(objects.ArtifactStoreError, match="sha256"):
        store.get_file(prefix + "metrics.json", tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_a_takeover_sees_the_epochs_only_the_bucket_holds(s3_env, tempering_home, tmp_path, monkeypatch):
    """Best-checkpoint selection after a takeover: the earlier epochs' scores are read from the bucket (not
    pulled), so the best epoch can be one this machine never had."""
    from tempering.train.checkpoint import known_checkpoints
    from tempering.train.selection import Selection, rebuild

    runs = get_settings().runs_dir
    for step, epoch, loss in ((3, 1, 0.5), (6, 2, 0.9)):
        folder = runs / "run1" / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(os.urandom(1000))
        (folder / "metrics.json").write_text(json.dumps({"step": step, "epoch_completed": epoch,
                                                         "selection_value": loss}))
        (folder / "COMPLETE").write_text("ok\n")
        objects.publish_folder(folder, "COMPLETE")

    _switch_home(monkeypatch, tmp_path / "other-machine")
    run = get_settings().runs_dir / "run1"
    assert [p.name for p in known_checkpoints(run)] == ["step-000003", "step-000006"]
    selection = rebuild(Selection("loss", patience=0), known_checkpoints(run))
    assert (selection.best.epoch, selection.best.step) == (1, 3)
    assert not selection.best.checkpoint.exists()  # scored from the bucket, its weights not pulled
    assert objects.pull_folder(selection.best.checkpoint, "COMPLETE")


def test_a_mounted_folder_is_a_shared_store_too(tempering_home, tmp_path, monkeypatch):
    """``file:///…``: the same interface on a mounted share (no S3 server needed)."""
    share = tmp_path / "share"
    monkeypatch.setenv("TEMPERING_ARTIFACTS_URL", share.as_uri())
    reset_settings()
    model = get_settings().runs_dir / "r1" / "model"
    model.mkdir(parents=True)
    (model / "adapter_model.safetensors").write_bytes(b"weights")
    (model / "tempering.json").write_text('{"id": "ft:x::r1"}')
    objects.publish_folder(model, "tempering.json")
    assert (share / "runs" / "r1" / "model" / "tempering.json").is_file()
    assert [o.key for o in objects.shared_store().list("runs/r1/")] == [
        "runs/r1/model/adapter_model.safetensors", "runs/r1/model/tempering.json"]
    with pytest.raises(objects.ArtifactStoreError, match="not an artifact key"):
        objects.shared_store().head("runs/../../etc/passwd")

    _switch_home(monkeypatch, tmp_path / "elsewhere")
    pulled = get_settings().runs_dir / "r1" / "model"
    assert objects.pull_folder(pulled, "tempering.json")
    assert (pulled / "adapter_model.safetensors").read_bytes() == b"weights"
    objects.remove(get_settings().runs_dir / "r1", folder=True)
    assert not objects.shared_store().list("runs/")


def test_uploads_are_shared_and_the_cache_is_bounded(s3_env, tempering_home, tmp_path, monkeypatch):
    from tempering.store.artifacts import ArtifactStore

    store = ArtifactStore(get_settings().artifacts_dir)
    sizes = {}
    for i in range(3):
        writer = store.open_upload(f"file-{i}", limit=10_000)
        writer.write(bytes([i]) * 4000)
        sizes[i] = writer.commit()
        os.utime(store.local_path(f"file-{i}"), (1000 + i, 1000 + i))  # file-0 least recently used
    assert objects.shared_store().head("artifacts/files/file-1").size == 4000

    _switch_home(monkeypatch, tmp_path / "worker-home")
    monkeypatch.setenv("TEMPERING_ARTIFACTS_CACHE_BYTES", "9000")
    reset_settings()
    worker = ArtifactStore(get_settings().artifacts_dir)
    assert not worker.local_path("file-2").exists()
    for i in range(3):
        assert worker.file_path(f"file-{i}").read_bytes() == bytes([i]) * 4000
        os.utime(worker.local_path(f"file-{i}"), (2000 + i, 2000 + i))
    held = sorted(p.name for p in (get_settings().artifacts_dir / "files").iterdir())
    assert held == ["file-1", "file-2"]  # the least recently used one went; it is pulled again when needed
    assert worker.file_path("file-0").read_bytes() == bytes([0]) * 4000

    worker.delete("file-1")
    assert objects.shared_store().head("artifacts/files/file-1") is None
    from pydantic import ValidationError

    from tempering.settings import Settings

    with pytest.raises(ValidationError, match="artifacts_url must be"):
        Settings(artifacts_url="https://bucket.example.com/x")
    assert Settings(artifacts_url="").artifacts_url is None
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # a refusal names the store and the key
    with pytest.raises(objects.ArtifactStoreError, match=r"s3://tempering-test/t-\w+ failed to store x/y: "):
        objects.open_store(s3_env["TEMPERING_ARTIFACTS_URL"]).put_bytes("x/y", b"1")
    with pytest.raises(objects.ArtifactStoreError, match="names no bucket"):
        objects.open_store("s3:///nobucket")
    with pytest.raises(objects.ArtifactStoreError, match="must be s3://"):
        objects.open_store("http://example.com/x")


# ---- several machines: a server, workers and another server, each with its own home ----

class Platform:
    """Processes sharing only the database (a SQLite file outside every home) and the bucket."""

    def __init__(self, root: Path, env: dict, tiny_model_dir: Path):
        from cryptography.fernet import Fernet

        self.root, self.tiny = root, tiny_model_dir
        self.database = root / "shared.db"
        self.env = {**os.environ, **env, "TEMPERING_DATABASE_URL": f"sqlite:///{self.database}",
                    "TEMPERING_SECRET_KEY": Fernet.generate_key().decode(), "TEMPERING_WORKER_LEASE_SECONDS": "3",
                    "TEMPERING_SERVE_THREADS": "1"}
        self.key = None
        self.processes: list[subprocess.Popen] = []

    def home(self, name: str, *, register: bool = True) -> dict:
        """A new machine's environment: its own empty home (the base model's weights registered: they stay
        local)."""
        from live_server import register_model

        home = self.root / name
        if register:
            register_model(home, TINY_ID, self.tiny)
        return {**self.env, "TEMPERING_HOME": str(home)}

    def server(self, env: dict) -> tuple[subprocess.Popen, openai.OpenAI, httpx.Client]:
        from live_server import free_port, start_serving, wait_until_serving

        port = free_port()
        process = start_serving(env, port, "--workers", "0")
        self.processes.append(process)
        self.key = wait_until_serving(process, port) or self.key  # printed by the first start only
        base = f"http://127.0.0.1:{port}/v1"
        return (process, openai.OpenAI(base_url=base, api_key=self.key, max_retries=2),
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {self.key}"}, timeout=120))

    def worker(self, env: dict) -> subprocess.Popen:
        from live_server import start_worker

        process = start_worker(env)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        from live_server import stop

        for process in self.processes:
            if process.poll() is None:
                stop(process)


@pytest.fixture(scope="module")
def platform(s3_server, tiny_model_dir, tmp_path_factory):
    """A job trained by a worker killed after its first checkpoint and taken over by a worker on another
    machine; then the same job uninterrupted, for reference. The server's, both workers' homes are apart."""
    p = Platform(tmp_path_factory.mktemp("platform"), s3_server.env("platform"), tiny_model_dir)
    try:
        _, client, _ = p.server(p.home("server-home"))
        file_id = client.files.create(file=("t.jsonl", TRAIN), purpose="fine-tune").id
        params = {"model": TINY_ID, "training_file": file_id, "seed": 8, "suffix": "shared",
                  "hyperparameters": {"n_epochs": 6, "batch_size": 1, "learning_rate_multiplier": 3.0}}
        job = client.fine_tuning.jobs.create(**params)
        first = p.worker(p.home("worker-1"))
        deadline = time.monotonic() + 180
        while not client.fine_tuning.jobs.checkpoints.list(job.id).data and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = p.worker(p.home("worker-2"))
        resumed = _wait(client, job.id, timeout=240)
        reference = _wait(client, client.fine_tuning.jobs.create(**params).id, timeout=240)
        second.terminate()
        second.wait()
        yield {"platform": p, "client": client, "resumed": resumed, "reference": reference}
    finally:
        p.stop_all()


def _adapter_from_the_bucket(monkeypatch, home: Path, model_id: str) -> dict:
    from tempering.train import artifacts

    _switch_home(monkeypatch, home)
    folder, _ = artifacts.resolve_finetuned(model_id)  # pulled into this empty home
    return load_file(folder / "adapter_model.safetensors")


def test_a_killed_job_is_taken_over_on_another_machine_from_the_bucket(platform, s3_server, monkeypatch, tmp_path):
    client, resumed, reference = platform["client"], platform["resumed"], platform["reference"]
    assert resumed.status == "succeeded", resumed.error
    assert reference.status == "succeeded", reference.error
    events = list(client.fine_tuning.jobs.list_events(resumed.id, limit=50))
    assert any(e.message.startswith("Resumed from checkpoint") for e in events)
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    total = client.fine_tuning.jobs.checkpoints.list(resumed.id).data[0].step_number
    assert sorted(steps) == list(range(1, total + 1))  # every step once, none twice

    root = platform["platform"].root
    run = run_id_of(resumed.id)
    assert (root / "worker-1" / "runs" / run / "checkpoints").is_dir()  # the killed worker had started it …
    assert not (root / "worker-1" / "runs" / run / "model").exists()  # … and never finished it
    assert not (root / "server-home" / "runs").exists()  # the server trained nothing

    for key, value in s3_server.env("platform").items():
        monkeypatch.setenv(key, value)
    a = _adapter_from_the_bucket(monkeypatch, tmp_path / "reader-a", resumed.fine_tuned_model)
    b = _adapter_from_the_bucket(monkeypatch, tmp_path / "reader-b", reference.fine_tuned_model)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)

    from tempering.train import artifacts

    _switch_home(monkeypatch, tmp_path / "lister")  # another machine lists the bucket's models …
    listed = {m["id"] for m in artifacts.list_finetuned()}
    assert {resumed.fine_tuned_model, reference.fine_tuned_model} <= listed
    assert not (tmp_path / "lister" / "runs").exists()  # … reading their metadata, caching no adapter


def _chat_through_a_deployment(http: httpx.Client, model: str, name: str) -> dict:
    created = http.post("/deployments", json={"model": model, "name": name})
    assert created.status_code == 200, created.text
    answer = http.post("/chat/completions", json={"model": name, "max_tokens": 8, "temperature": 0,
                                                  "messages": [{"role": "user", "content": "Name number 3."}]})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_server_with_an_empty_home_serves_a_model_trained_elsewhere(platform):
    p, resumed = platform["platform"], platform["resumed"]
    env = p.home("empty-server-home")
    home = Path(env["TEMPERING_HOME"])
    assert not (home / "runs").exists() and not (home / "artifacts").exists()  # only the base model registered
    _, client, http = p.server(env)
    answer = _chat_through_a_deployment(http, resumed.fine_tuned_model, "shared-elsewhere")
    assert answer["model"] == resumed.fine_tuned_model and answer["choices"][0]["message"]["content"]
    results = client.files.content(resumed.result_files[0]).text  # written by the worker, read from the bucket
    assert results.startswith("step,train_loss")
    assert (home / "runs" / run_id_of(resumed.id) / "model" / "adapter_model.safetensors").is_file()  # cached


def _cli(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tempering.cli.main", *map(str, args)], env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=120, check=False)


def test_backup_wipe_restore_serves_the_model_again(platform, tmp_path):
    p, resumed = platform["platform"], platform["resumed"]
    p.stop_all()
    env = p.home("server-home", register=False)
    backup = tmp_path / "backup"
    done = _cli(env, "backup", backup, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["database"] == "sqlite" and summary["objects"] > 0 and summary["schema_revision"]
    manifest = json.loads((backup / "manifest.json").read_text())
    assert any(key.endswith("/model/tempering.json") for key, _, _ in manifest["objects"])

    p.database.unlink()  # the platform is wiped: the database and the server's home
    shutil.rmtree(env["TEMPERING_HOME"])
    Path(env["TEMPERING_HOME"]).mkdir()
    (Path(env["TEMPERING_HOME"]) / "stray").write_text("x")
    refused = _cli(env, "restore", backup)
    assert refused.returncode == 1 and "--force" in refused.stderr
    (Path(env["TEMPERING_HOME"]) / "stray").unlink()
    restored = _cli(env, "restore", backup)
    assert restored.returncode == 0, restored.stderr
    assert (Path(env["TEMPERING_HOME"]) / "catalog.json").is_file()  # the base model's registration came back

    _, client, http = p.server(env)
    assert client.fine_tuning.jobs.retrieve(resumed.id).fine_tuned_model == resumed.fine_tuned_model
    answer = _chat_through_a_deployment(http, resumed.fine_tuned_model, "restored")
    assert answer["choices"][0]["message"]["content"]
