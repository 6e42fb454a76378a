"""End to end on the embedded default (SmolLM2-135M-Instruct): the real commands in real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import worker_cores

from tempering.catalog import get_card
from tempering.catalog.loading import embedded_gguf_path
from tempering.errors import ModelUnavailableError

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "xbox-support"


@pytest.fixture(scope="module")
def e2e_home(tmp_path_factory) -> Path:
    try:
        embedded_gguf_path(get_card("smollm2-135m-instruct"))
    except ModelUnavailableError as exc:
        pytest.skip(str(exc))
    return tmp_path_factory.mktemp("e2e-home")


def tempering(home: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "TEMPERING_HOME": str(home), "OMP_NUM_THREADS": str(worker_cores())}
    cli = [sys.executable, "-m", "tempering.cli.main", *map(str, args)]
    return subprocess.run(cli, env=env, capture_output=True, text=True, timeout=900, check=False)


def test_prepare_converts_once_then_loads_from_the_cache(e2e_home, monkeypatch):
    from tempering.catalog import load_causal_lm, load_tokenizer
    from tempering.settings import reset_settings

    monkeypatch.setenv("TEMPERING_HOME", str(e2e_home))
    reset_settings()
    early = load_tokenizer("smollm2-135m-instruct")  # validating data or estimating: no conversion yet
    assert not (e2e_home / "models" / "smollm2-135m-instruct").exists()
    extracted = e2e_home / "models" / ".tokenizers" / "smollm2-135m-instruct"

    first = tempering(e2e_home, "models", "prepare")
    assert first.returncode == 0, first.stderr
    folder = e2e_home / "models" / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file() and (folder / "tempering-model.json").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    assert (folder / "tokenizer.json").read_bytes() == (extracted / "tokenizer.json").read_bytes()
    started = time.perf_counter()
    load_causal_lm("smollm2-135m-instruct")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    assert time.perf_counter() - started < 20  # from the cache, not a second de-quantization
    assert "<|im_start|>" in tokenizer.chat_template
    text = "Mi controller ünïcode card_arrival?"
    assert (tokenizer.chat_template, tokenizer.pad_token_id, tokenizer(text)["input_ids"]) == (
        early.chat_template, early.pad_token_id, early(text)["input_ids"])


def test_tune_on_a_small_sample_then_chat(e2e_home, tmp_path):
    lines = (EXAMPLE / "train.jsonl").read_text(encoding="utf-8").splitlines()
    sample = tmp_path / "sample.jsonl"
    sample.write_text("\n".join(lines[:12]) + "\n", encoding="utf-8")
    valid = tmp_path / "valid.jsonl"
    valid.write_text("\n".join((EXAMPLE / "validation.jsonl").read_text().splitlines()[:6]) + "\n")

    tuned = tempering(e2e_home, "tune", sample, "--validation", valid, "--epochs", 1, "--batch-size", 4,
                      "--suffix", "e2e", "--seed", 0, "--json")
    assert tuned.returncode == 0, tuned.stderr
    result = json.loads(tuned.stdout)
    assert result["model_id"].startswith("ft:smollm2-135m-instruct:e2e:")
    assert result["valid_loss"] < result["base_valid_loss"]

    system = json.loads(lines[0])["messages"][0]["content"]
    chat = tempering(e2e_home, "chat", result["model_id"], "My controller keeps disconnecting. Help?",
                     "--system", system, "--max-tokens", 40)
    assert chat.returncode == 0, chat.stderr
    assert len(chat.stdout.split()) >= 3  # a real answer in words
