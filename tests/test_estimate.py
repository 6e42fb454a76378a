"""Estimate before submit: the arithmetic, the price table, and a real calibration on the tiny model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tempering.cli.main import app
from tempering.data.encode import encode_chat
from tempering.train.estimate import (
    EVAL_COST,
    Calibration,
    estimate,
    estimate_seconds,
    find_calibration,
    price_per_1k,
    read_calibrations,
    save_calibration,
    synthetic_examples,
)
from tempering.settings import get_settings, reset_settings
from tempering.train.config import parse_config


def _calibration(**overrides) -> Calibration:
    values = dict(
        model="smollm2-135m-instruct",
        device="cpu",
        dtype="float32",
        tokens_per_second=1000.0,
        overhead_seconds=5.0,
        trained_tokens=10_000,
        fit_seconds=10.0,
        total_seconds=15.0,
        n_examples=32,
        batch_size=8,
        n_epochs=2,
        measured_at=0,
    )
    return Calibration(**{**values, **overrides})


def test_seconds_arithmetic():
    cal = _calibration()
    assert estimate_seconds(50_000, 0, 3, cal) == pytest.approx(5 + 50)
    # validation is evaluated before training, after each of the 3 epochs and at the end: 5 passes
    assert estimate_seconds(50_000, 3_000, 3, cal) == pytest.approx(5 + (50_000 + EVAL_COST * 15_000) / 1000)


def test_price_table_defaults_and_environment(monkeypatch):
    assert (
        price_per_1k("smollm2-135m-instruct")
        == get_settings().price_per_1k_training_tokens["smollm2-135m-instruct"]
    )
    assert price_per_1k("some-unknown-model") == get_settings().price_per_1k_training_tokens["*"]
    monkeypatch.setenv("TEMPERING_PRICE_PER_1K_TRAINING_TOKENS", json.dumps({"smollm2-135m-instruct": 0.5}))
    reset_settings()
    assert price_per_1k("smollm2-135m-instruct") == 0.5
    assert price_per_1k("some-unknown-model") == 0.0  # the table was replaced as a whole


def test_calibration_store_round_trip_and_corrupt_file():
    assert read_calibrations() == {}
    save_calibration(_calibration())
    save_calibration(_calibration(device="cuda:NVIDIA H100", tokens_per_second=20_000.0))
    assert find_calibration("smollm2-135m-instruct", "cpu").tokens_per_second == 1000.0
    assert find_calibration("smollm2-135m-instruct", "cuda:NVIDIA H100").tokens_per_second == 20_000.0
    assert find_calibration("smollm2-135m-instruct", "mps") is None
    get_settings().calibration_file.write_text("{not json")
    assert read_calibrations() == {}


def test_estimate_tokens_epochs_time_and_cost(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPERING_PRICE_PER_1K_TRAINING_TOKENS", json.dumps({"*": 0.01}))
    reset_settings()
    train = synthetic_examples(20, seed=1)
    valid = synthetic_examples(4, seed=2)
    config = parse_config({"training_file": tmp_path / "t.jsonl", "device": "cpu"})
    per_epoch = sum(len(encode_chat(tokenizer, m)) for m in train)
    valid_tokens = sum(len(encode_chat(tokenizer, m)) for m in valid)

    uncalibrated = estimate(train, tokenizer=tokenizer, config=config, validation=valid)
    assert uncalibrated.n_epochs == 5  # auto: 20 examples → at least 100 seen
    assert uncalibrated.tokens_per_epoch == per_epoch and uncalibrated.trained_tokens == 5 * per_epoch
    assert uncalibrated.validation_tokens == valid_tokens
    assert uncalibrated.seconds is None and "tempering calibrate" in uncalibrated.notes[0]
    assert uncalibrated.cost == pytest.approx(round(5 * per_epoch / 1000 * 0.01, 4))

    save_calibration(_calibration())
    fixed = parse_config(
        {"training_file": tmp_path / "t.jsonl", "device": "cpu", "hyperparameters": {"n_epochs": 2}}
    )
    result = estimate(train, tokenizer=tokenizer, config=fixed, validation=valid)
    assert result.n_epochs == 2 and result.trained_tokens == 2 * per_epoch
    assert result.seconds == pytest.approx(
        round(5 + (2 * per_epoch + EVAL_COST * 4 * valid_tokens) / 1000, 1)
    )
    assert result.device == "cpu" and result.tokens_per_second == 1000.0 and not result.notes


def test_calibrate_times_a_real_run_and_leaves_no_model(tiny_model):
    result = CliRunner().invoke(app, ["calibrate", "--model", tiny_model, "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert measured["model"] == tiny_model and measured["device"] == "cpu"
    assert measured["tokens_per_second"] > 0 and 0 < measured["fit_seconds"] <= measured["total_seconds"]
    assert measured["n_examples"] == 16  # nothing held out: evaluation is not part of the timing
    assert measured["trained_tokens"] > 0 and measured["n_epochs"] == 3 and measured["batch_size"] == 4
    assert find_calibration(tiny_model, "cpu").tokens_per_second == measured["tokens_per_second"]
    runs = get_settings().runs_dir
    assert not runs.exists() or not any(runs.iterdir())  # the timing run is not a model
    listed = json.loads(
        CliRunner().invoke(app, ["models", "list", "--search", "fine-tuned", "--json"]).stdout
    )
    assert listed == []
