"""Exact resume: a run stopped mid-epoch (cancelled, or killed with SIGKILL) and resumed ends exactly where
an uninterrupted run with the same seed ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import chat_example, write_jsonl
from safetensors.torch import load_file

from tempering.errors import InvalidConfigError
from tempering.train import TuneConfig, tune
from tempering.train.artifacts import read_run, resolve_finetuned
from tempering.train.checkpoint import COMPLETE, latest_checkpoint, list_checkpoints
from tempering.train.fit import RunCancelled


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    train = [chat_example(f"Spell the number {i}.", f"The number {i} is spelled {i * 7}.") for i in range(40)]
    valid = [chat_example(f"Spell the number {i}.", f"The number {i} is spelled {i * 7}.") for i in range(40, 46)]
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "valid.jsonl", valid)


def _config(model, data, **extra) -> TuneConfig:
    train, valid = data
    return TuneConfig(model=model, training_file=train, validation_file=valid, seed=5,
                      hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 5.0}, **extra)


def _adapter(model_id: str) -> dict:
    folder, _ = resolve_finetuned(model_id)
    return load_file(folder / "adapter_model.safetensors")


def _assert_same_result(resumed, reference) -> None:
    a, b = _adapter(resumed.model_id), _adapter(reference.model_id)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert resumed.valid_loss == pytest.approx(reference.valid_loss, rel=1e-5)
    assert resumed.train_loss == pytest.approx(reference.train_loss, rel=1e-5)


def test_cancel_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_model, data):
    reference = tune(_config(tiny_model, data))

    steps = []
    stop_at = 14  # epoch 2 of 3 (10 steps per epoch), after the epoch-1 checkpoint
    with pytest.raises(RunCancelled, match="cancelled at step 14"):
        tune(_config(tiny_model, data), on_event=lambda e: steps.append(e["data"].get("step")),
             should_stop=lambda: max((s for s in steps if s), default=0) >= stop_at)
    run_folder = latest_checkpoint(Path(os.environ["TEMPERING_HOME"]) / "runs" / _only_unfinished_run())
    assert run_folder is not None and run_folder.name == "step-000014"

    resumed = tune(_config(tiny_model, data), resume=True)
    _assert_same_result(resumed, reference)
    run = read_run(Path(resumed.run_dir))
    assert run["status"] == "succeeded"
    events = [json.loads(line)["type"] for line in (Path(resumed.run_dir) / "events.jsonl").read_text().splitlines()]
    assert "cancelled" in events and "resumed" in events
    steps_logged = [int(line.split(",")[0]) for line in
                    (Path(resumed.run_dir) / "results.csv").read_text().splitlines()[1:] if line.split(",")[1]]
    assert steps_logged == list(range(1, 31))  # every step once, none repeated by the resume


def _only_unfinished_run() -> str:
    runs = Path(os.environ["TEMPERING_HOME"]) / "runs"
    unfinished = [f.name for f in runs.iterdir() if read_run(f)["status"] != "succeeded"]
    assert len(unfinished) == 1
    return unfinished[0]


def test_resume_without_an_interrupted_run_is_refused(tiny_model, data):
    with pytest.raises(InvalidConfigError, match="no interrupted run"):
        tune(_config(tiny_model, data), resume=True)


def test_latest_checkpoint_ignores_a_half_written_one(tmp_path):
    for name, complete in (("step-000010", True), ("step-000020", True), ("step-000030", False)):
        folder = tmp_path / "checkpoints" / name
        folder.mkdir(parents=True)
        if complete:
            (folder / COMPLETE).write_text("ok\n")
    (tmp_path / "checkpoints" / ".step-000040.123.tmp").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000010", "step-000020"]
    assert latest_checkpoint(tmp_path).name == "step-000020"


def test_discard_partial_removes_only_dead_processes_temp_folders(tmp_path):
    import os

    from tempering.train.checkpoint import discard_partial

    folder = tmp_path / "checkpoints"
    dead, live = folder / f".step-000040.{2**22 + 1}.tmp", folder / f".step-000050.{os.getpid()}.tmp"
    for path in (dead, live, folder / "step-000030"):
        path.mkdir(parents=True)
    assert discard_partial(tmp_path) == [dead]  # no process can have a pid above 2**22
    assert sorted(p.name for p in folder.iterdir()) == [live.name, "step-000030"]


def _cli(home: Path, *args) -> list[str]:
    return [sys.executable, "-m", "tempering.cli.main", *map(str, args)]


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_model, data, tempering_home):
    train, valid = data
    args = ["tune", train, "--validation", valid, "--model", tiny_model, "--epochs", 5, "--batch-size", 4,
            "--learning-rate-multiplier", 5.0, "--seed", 5, "--checkpoint-every", 3, "--json"]
    env = {**os.environ, "TEMPERING_HOME": str(tempering_home)}
    reference = json.loads(subprocess.run(_cli(tempering_home, *args), env=env, capture_output=True, text=True,
                                          check=True, timeout=300).stdout)

    victim = subprocess.Popen(_cli(tempering_home, *args), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    runs = tempering_home / "runs"
    killed_at = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        for folder in runs.iterdir():
            events = folder / "events.jsonl"
            if folder.name == Path(reference["run_dir"]).name or not events.exists():
                continue
            steps = [json.loads(line)["data"].get("step") for line in events.read_text().splitlines()[:-1]]
            if max((s for s in steps if s), default=0) >= 17:  # mid epoch 2, past the step-15 checkpoint
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed_at = folder
                break
        time.sleep(0.005)
    assert killed_at is not None, "the run finished before it could be killed"
    assert read_run(killed_at)["status"] == "running"  # it never got to say anything: killed
    assert 15 <= int(latest_checkpoint(killed_at).name.removeprefix("step-")) < 50  # a real one, mid-run
    assert not (killed_at / "model").exists()

    resumed = subprocess.run(_cli(tempering_home, *args, "--resume"), env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert Path(result["run_dir"]) == killed_at

    class R:  # the two results in the shape _assert_same_result reads
        def __init__(self, d):
            self.__dict__.update(d)

    _assert_same_result(R(result), R(reference))


# ---- across an upgrade: a job resumed (or started) by a newer version does what it was created to do


def test_a_job_stored_before_an_option_existed_reads_it_as_it_was_then(tmp_path):
    from tempering.jobs.runner import tune_config
    from tempering.services.jobs import stored_config
    from tempering.store.models import Job
    from tempering.train.config import BEFORE_OPTION

    class Store:
        @staticmethod
        def file_path(file_id):
            return tmp_path / file_id

    today = stored_config(TuneConfig(model="smollm2-135m-instruct", task="classification",
                                     training_file=tmp_path / "x.csv", seed=3))
    job = Job(model="smollm2-135m-instruct", training_file="file-1", seed=3,
              config={k: v for k, v in today.items() if k not in BEFORE_OPTION})
    then = tune_config(job, Store())
    assert (then.class_weights, then.early_stopping, then.head_init) == ("none", 0, "random")
    job.config = today  # stored with the options: their stored values
    now = tune_config(job, Store())
    assert (now.class_weights, now.early_stopping, now.head_init) == ("auto", "auto", "auto")
    assert now.training_file == tmp_path / "file-1" and now.seed == 3


def test_how_a_classification_run_read_its_texts_is_read_back_from_the_run(tmp_path):
    from tempering.train.artifacts import run_input_format

    def run(record: dict | None, events: list[dict]) -> str:
        folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"id": "x", **(record or {})}))
        (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        return run_input_format(folder)

    head = {"type": "head_init", "message": "…", "data": {"head_init": "labels"}}
    assert run({"input_format": "chat"}, []) == "chat"
    assert run(None, [{"type": "message", "data": {}}, {**head, "data": {"input_format": "chat"}}]) == "chat"
    assert run(None, [head]) == "text"  # a head_init event from before the chat-template input
    assert run(None, []) == "text"  # before head_init events


def test_a_classifier_run_started_on_bare_text_resumes_on_bare_text(tiny_model, tmp_path):
    """A run started before the chat-template input (its run.json and events say nothing of it) is resumed
    by today's code: it keeps reading texts alone, as its checkpoints were trained."""
    rows = ["text,label"] + [f"item {i} is {'red' if i % 2 else 'blue'},{'odd' if i % 2 else 'even'}"
                             for i in range(24)]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    config = TuneConfig(model=tiny_model, task="classification", training_file=tmp_path / "c.csv", seed=5,
                        evaluate=False, hyperparameters={"n_epochs": 2, "batch_size": 4})
    steps = []
    with pytest.raises(RunCancelled):
        tune(config, on_event=lambda e: steps.append(e["data"].get("step")),
             should_stop=lambda: max((s for s in steps if s), default=0) >= 7)
    folder = Path(os.environ["TEMPERING_HOME"]) / "runs" / _only_unfinished_run()
    run = read_run(folder)
    assert run["input_format"] == "chat"  # recorded as the run starts
    del run["input_format"]  # as a run started before the chat-template input was
    (folder / "run.json").write_text(json.dumps(run))
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    for event in events:
        event["data"].pop("input_format", None)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    resumed = tune(config, resume=True)
    meta = json.loads((Path(resumed.output_dir) / "tempering.json").read_text())
    assert meta["input_format"] == "text" and read_run(folder)["status"] == "succeeded"
