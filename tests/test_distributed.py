"""Two CPU processes (torchrun, gloo) train to the same adapter as one process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import chat_example, write_jsonl
from safetensors.torch import load_file

from tempering.train.artifacts import resolve_finetuned


def test_two_processes_match_one(tiny_model, tmp_path, tempering_home):
    # 21 examples, batch 4: the last batch of each epoch has one example, so one process gets none.
    rows = [chat_example(f"Capital number {i}?", f"City {i * 3} is the capital.") for i in range(21)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[:5])
    args = ["tune", train, "--validation", valid, "--model", tiny_model, "--epochs", 2, "--batch-size", 4,
            "--learning-rate-multiplier", 5.0, "--seed", 9, "--json"]
    env = {**os.environ, "TEMPERING_HOME": str(tempering_home), "OMP_NUM_THREADS": "1"}
    cli = ["-m", "tempering.cli.main", *map(str, args)]

    single = subprocess.run([sys.executable, *cli], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             *cli], env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr
    one, two = json.loads(single.stdout), json.loads(double.stdout)  # only process 0 prints

    assert two["n_train_examples"] == one["n_train_examples"] == 21
    a = load_file(resolve_finetuned(one["model_id"])[0] / "adapter_model.safetensors")
    b = load_file(resolve_finetuned(two["model_id"])[0] / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    for key in ("train_loss", "valid_loss", "base_valid_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key
    events = (tempering_home / "runs" / two["run_dir"].rsplit("/", 1)[-1] / "events.jsonl").read_text()
    assert "2 processes" in events
