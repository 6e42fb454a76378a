"""Crashes: a worker killed with SIGKILL mid-job loses its lease and another worker resumes the job from its
checkpoint to the same result; a server killed and restarted loses no job and no file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import openai
import pytest
import torch
from conftest import TINY_ID, chat_example
from live_server import free_port, register_model, start_serving, start_worker, wait_until_serving
from safetensors.torch import load_file

from tempering.store.models import run_id_of

TRAIN = "".join(json.dumps(chat_example(f"Name number {i}.", f"Number {i} is {i * 11}.")) + "\n"
                for i in range(24)).encode()


class Cluster:
    """An API server without workers, plus worker processes started and killed at will, on one home."""

    def __init__(self, home: Path, port: int):
        self.home, self.port = home, port
        self.env = {**os.environ, "TEMPERING_HOME": str(home), "TEMPERING_WORKER_LEASE_SECONDS": "3"}
        self.server = None
        self.key = None

    def start_server(self) -> openai.OpenAI:
        self.server = start_serving(self.env, self.port, "--workers", "0")
        key = wait_until_serving(self.server, self.port)
        self.key = self.key or key  # printed on the first start only
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=self.key, max_retries=2)

    def start_worker(self) -> subprocess.Popen:
        return start_worker(self.env)


@pytest.fixture
def cluster(tiny_model_dir, tmp_path):
    home = tmp_path / "cluster-home"
    register_model(home, TINY_ID, tiny_model_dir)
    c = Cluster(home, free_port())
    yield c
    if c.server and c.server.poll() is None:
        c.server.kill()
        c.server.wait()


def _wait(client, job_id, statuses, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"{job_id} is still {job.status}")


def _adapter(home: Path, job) -> dict:
    return load_file(home / "runs" / run_id_of(job.id) / "model" / "adapter_model.safetensors")


def test_killed_worker_job_is_taken_over_and_resumed_exactly(cluster):
    client = cluster.start_server()
    file_id = client.files.create(file=("t.jsonl", TRAIN), purpose="fine-tune").id
    params = {"model": TINY_ID, "training_file": file_id, "seed": 8,
              "hyperparameters": {"n_epochs": 8, "batch_size": 1, "learning_rate_multiplier": 3.0}}
    job = client.fine_tuning.jobs.create(**params)

    first = cluster.start_worker()
    deadline = time.monotonic() + 120
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    first.send_signal(signal.SIGKILL)
    first.wait()

    second = cluster.start_worker()
    try:
        done = _wait(client, job.id, ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=50))  # pages through all
        assert any(e.message.startswith("Resumed from checkpoint") for e in events)
        steps = [e.data["step"] for e in events if e.type == "metrics"]
        total = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number  # 8 epochs × 22 (2 held out)
        assert total == 8 * 22 and sorted(steps) == list(range(1, total + 1))  # every step once, none twice

        reference = _wait(client, client.fine_tuning.jobs.create(**params).id, ("succeeded", "failed"))
        assert reference.status == "succeeded"
    finally:
        second.terminate()
        second.wait()
    a, b = _adapter(cluster.home, done), _adapter(cluster.home, reference)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_server_restart_loses_no_job_and_no_file(cluster):
    client = cluster.start_server()
    file_id = client.files.create(file=("t.jsonl", TRAIN), purpose="fine-tune").id
    job_id = client.fine_tuning.jobs.create(model=TINY_ID, training_file=file_id).id  # no worker: stays queued
    cluster.server.send_signal(signal.SIGKILL)
    cluster.server.wait()

    client = cluster.start_server()
    assert client.fine_tuning.jobs.retrieve(job_id).status == "validating_files"
    assert client.files.content(file_id).read() == TRAIN
    worker = cluster.start_worker()
    try:
        assert _wait(client, job_id, ("succeeded", "failed")).status == "succeeded"
    finally:
        worker.terminate()
        worker.wait()
