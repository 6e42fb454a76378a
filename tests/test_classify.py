"""The classification task on the tiny model: a head trained fully, the body with LoRA, real metrics."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tempering.cli.main import app
from tempering.errors import InvalidDataError
from tempering.train import TuneConfig, tune
from tempering.train.classify import classification_metrics

WORDS = {"refund": ["refund", "money back", "return payment"], "card": ["card", "plastic", "debit card"],
         "transfer": ["transfer", "send money", "wire"]}


@pytest.fixture
def intents_csv(tmp_path):
    rows = ["text,category"]
    for label, phrases in WORDS.items():
        for i in range(12):
            rows.append(f"I need help with my {phrases[i % 3]} number {i},{label}")
    path = tmp_path / "intents.csv"
    path.write_text("\r\n".join(rows) + "\r\n")  # CRLF, like many exported CSVs
    return path


def test_classification_tunes_a_head_and_reports_metrics(tiny_model, intents_csv):
    # validated on its own training data: what must go down is what it was trained on
    config = TuneConfig(model=tiny_model, task="classification", training_file=intents_csv,
                        validation_file=intents_csv, seed=2,
                        hyperparameters={"n_epochs": 6, "batch_size": 4, "learning_rate_multiplier": 10.0})
    result = tune(config)
    assert result.task == "classification" and result.n_valid_examples == 36
    report = result.classification
    assert set(report["per_class_f1"]) == set(WORDS)
    assert 0.0 <= report["macro_f1"] <= 1.0 and report["n"] == result.n_valid_examples
    assert result.valid_loss < result.base_valid_loss  # the trained head beats the random one
    assert result.valid_mean_token_accuracy == pytest.approx(report["accuracy"])

    from tempering.serve.classify import load_classifier_model

    classifier = load_classifier_model(result.model_id)
    [prediction] = classifier.classify(["I need help with my wire number 3"])
    assert prediction["label"] in WORDS
    assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-5)

    cli = CliRunner().invoke(app, ["classify", result.model_id, "a debit card question", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)[0]["label"] in WORDS
    chat = CliRunner().invoke(app, ["chat", result.model_id, "hi"])
    assert chat.exit_code == 1  # a classifier is not a chat model: clear error, no crash


def test_unseen_validation_labels_are_refused(tiny_model, intents_csv, tmp_path):
    valid = tmp_path / "valid.csv"
    valid.write_text("text,category\nwhere is my parcel,delivery\n")
    config = TuneConfig(model=tiny_model, task="classification", training_file=intents_csv, validation_file=valid)
    with pytest.raises(InvalidDataError, match="never seen in training: delivery"):
        tune(config)


def test_metrics_match_hand_counts():
    labels = {0: "a", 1: "b", 2: "c"}
    report = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], labels)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class_f1"]["b"] == pytest.approx(0.8)  # precision 2/3, recall 1
    assert report["top_confusions"][0]["count"] == 1 and len(report["top_confusions"]) == 2


def test_tune_estimate_prints_tokens_and_cost_without_training(tiny_model, qa_file, tempering_home):
    result = CliRunner().invoke(app, ["tune", str(qa_file), "--model", tiny_model, "--epochs", 2, "--estimate",
                                      "--json"])
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.stdout)
    assert estimate["n_epochs"] == 2 and estimate["trained_tokens"] == 2 * estimate["tokens_per_epoch"]
    assert estimate["n_train_examples"] == 18 and estimate["n_validation_examples"] == 2
    assert not (tempering_home / "runs").exists()
