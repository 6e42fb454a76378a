"""Best checkpoint, not last: the selection rules on their own, and a tiny-model job whose validation worsens
after its first epoch keeps that epoch, says so in its events, run and evaluation.json, and stops early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import chat_example, write_jsonl

from tempering.train import TuneConfig, tune
from tempering.train.artifacts import resolve_finetuned
from tempering.train.selection import Scored, Selection, rebuild


def _selection(metric: str, values: list[float], patience: int = 0, losses: list[float] | None = None) -> Selection:
    selection = Selection(metric, patience)
    for epoch, value in enumerate(values, 1):
        selection.add(Scored(epoch, epoch * 10, value, Path(f"step-{epoch * 10:06d}"),
                             losses[epoch - 1] if losses else None))
    return selection


def test_loss_is_minimised_and_f1_maximised_and_a_tie_keeps_the_earlier_epoch():
    assert _selection("loss", [1.0, 0.7, 0.9]).best.epoch == 2
    assert _selection("macro_f1", [0.5, 0.8, 0.6]).best.epoch == 2
    assert _selection("accuracy", [0.5, 0.5, 0.5]).best.epoch == 1
    assert _selection("loss", [1.0, 1.0 - 1e-6]).best.epoch == 1  # within MIN_DELTA is no improvement
    assert _selection("loss", [1.0, 0.8, 0.6]).best.epoch == 3  # the last, when it is the best


def test_a_tie_of_accuracy_or_macro_f1_goes_to_the_lower_validation_loss():
    # the DoRA run of docs/evaluation.md: macro-F1 0.7814 at epochs 3 and 5, loss 0.7149 and 0.6596
    values, losses = [0.7338, 0.7173, 0.7814, 0.7468, 0.7814], [1.114, 0.7753, 0.7149, 0.7618, 0.6596]
    assert _selection("macro_f1", values, losses=losses).best.epoch == 5
    reason = _selection("macro_f1", values, losses=losses).summary(early_stopped=False, planned_epochs=5)["reason"]
    assert "tied with epoch(s) 3 and kept for its lower validation loss (0.6596)" in reason
    assert _selection("macro_f1", values).best.epoch == 3  # no losses known: the earlier, as before
    assert _selection("accuracy", [0.8, 0.8], losses=[0.5, 0.6]).best.epoch == 1  # a higher loss: no
    assert _selection("accuracy", [0.8, 0.79], losses=[0.5, 0.1]).best.epoch == 1  # the metric first
    # and early stopping counts the tie with a lower loss as an improvement: patience restarts there
    assert not _selection("macro_f1", values, patience=2, losses=losses).should_stop()
    assert _selection("macro_f1", values, patience=2).should_stop()


def test_patience_counts_epochs_since_the_best():
    assert not _selection("loss", [1.0, 1.1], patience=2).should_stop()
    assert _selection("loss", [1.0, 1.1, 1.2], patience=2).should_stop()
    assert not _selection("loss", [1.0, 1.1, 0.9], patience=2).should_stop()  # improved again: counting restarts
    assert not _selection("loss", [1.0, 2.0, 3.0, 4.0], patience=0).should_stop()  # 0: never


def test_summary_says_which_and_why():
    summary = _selection("macro_f1", [0.5, 0.8, 0.6], patience=1).summary(
        early_stopped=True, planned_epochs=5, checkpoint_id=lambda step: f"ft:x::r:ckpt-step-{step}")
    assert summary["best_epoch"] == 2 and summary["checkpoint"] == "ft:x::r:ckpt-step-20"
    assert summary["last_value"] == 0.6 and summary["early_stopped"]
    assert "epoch 2 has the highest validation macro_f1 (0.8000)" in summary["reason"]
    assert "stopped early after epoch 3 of 5" in summary["reason"]
    assert Selection("loss", 0).summary(early_stopped=False, planned_epochs=3) is None  # no validation


def test_rebuild_reads_the_scores_a_resumed_run_already_has(tmp_path):
    folders = []
    for epoch, value in ((1, 0.9), (2, 0.5)):
        folder = tmp_path / f"step-{epoch:06d}"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"step": epoch, "epoch_completed": epoch,
                                                          "selection_value": value, "valid_loss": value + 1}))
        folders.append(folder)
    mid = tmp_path / "step-000003"
    mid.mkdir()
    (mid / "metrics.json").write_text(json.dumps({"step": 3, "train_loss": 0.1}))  # a mid-epoch checkpoint
    selection = rebuild(Selection("loss", 1), [*folders, mid])
    assert [s.epoch for s in selection.history] == [1, 2] and selection.best.checkpoint == folders[1]
    assert [s.loss for s in selection.history] == [1.9, 1.5]  # what breaks a tie after a resume too


@pytest.fixture
def conflicting(tmp_path):
    """Validation labels that contradict the training labels on the same texts: every step that fits the
    training set makes the validation loss worse, so the first epoch is the best by loss, whatever the seed."""
    train, valid = ["text,label"], ["text,label"]
    for i in range(12):
        for word, other in (("alpha", "beta"), ("beta", "alpha")):
            train.append(f"{word} number {i},{word}")
            valid.append(f"{word} number {i},{other}")
    (tmp_path / "train.csv").write_text("\n".join(train) + "\n")
    (tmp_path / "valid.csv").write_text("\n".join(valid) + "\n")
    return tmp_path / "train.csv", tmp_path / "valid.csv"


def _config(tiny_model, conflicting, **options) -> TuneConfig:
    train, valid = conflicting
    return TuneConfig(model=tiny_model, task="classification", training_file=train, validation_file=valid,
                      seed=3, selection_metric="loss",
                      hyperparameters={"n_epochs": 4, "batch_size": 8, "learning_rate_multiplier": 10.0}, **options)


def test_a_job_whose_validation_worsens_keeps_the_best_epoch_and_records_it(tiny_model, conflicting):
    from safetensors.torch import load_file

    from tempering.evaluate.job import tune_and_evaluate
    from tempering.evaluate.report import read_report

    events = []
    config = _config(tiny_model, conflicting, early_stopping=0)
    config.hyperparameters.n_epochs = 3  # (a 4th epoch of the tiny model turns back by 0.0004)
    result = tune_and_evaluate(config, on_event=events.append)
    losses = [e["data"]["valid_loss"] for e in events if e["type"] == "epoch"]
    assert losses == sorted(losses) and losses[0] < losses[-1]  # worse every epoch: the first is the best
    selection = result.selection
    assert selection["best_epoch"] == 1 and selection["last_epoch"] == 3 and not selection["early_stopped"]
    assert result.valid_loss == pytest.approx(losses[0], rel=1e-5)  # the kept model scores as that epoch did

    folder, meta = resolve_finetuned(result.model_id)
    kept = folder.parent / "checkpoints" / f"step-{selection['best_step']:06d}"
    saved, checkpoint = load_file(folder / "adapter_model.safetensors"), load_file(kept / "adapter_model.safetensors")
    assert saved.keys() == checkpoint.keys() and all(torch.equal(saved[k], checkpoint[k]) for k in saved)
    assert meta["selection"]["checkpoint"] == f"{result.model_id}:ckpt-step-{selection['best_step']}"
    [event] = [e for e in events if e["type"] == "best_checkpoint"]
    assert "epoch 1" in event["message"] and "the last epoch's was" in event["message"]
    run = json.loads((folder.parent / "run.json").read_text())
    assert run["selection"]["best_step"] == selection["best_step"]

    report = read_report(folder.parent)
    assert report.selection.best_epoch == 1 and report.selection.metric == "loss"
    [selected] = [c for c in report.checkpoints if c.selected]
    assert selected.step == selection["best_step"] and selected.selection_value == pytest.approx(losses[0])

    from tempering.evaluate import evaluate_file  # an on-demand evaluation of the model says the same

    on_demand = evaluate_file(result.model_id, conflicting[1], compare=None, max_examples=4)
    assert on_demand.selection.checkpoint == selection["checkpoint"]


def test_classification_stops_early_by_default_and_charges_only_the_epochs_trained(tiny_model, conflicting,
                                                                                    tokenizer):
    events = []
    config = _config(tiny_model, conflicting, evaluate=False)
    config.hyperparameters.n_epochs = 8
    result = tune(config, on_event=events.append)
    epochs = [e for e in events if e["type"] == "epoch"]
    assert len(epochs) == 3 and result.selection["early_stopped"]  # auto patience 2: epochs 2 and 3 no better
    [stopped] = [e for e in events if e["type"] == "early_stopped"]
    assert stopped["data"]["epoch"] == 3 and stopped["data"]["best_epoch"] == 1
    from tempering.train.classify import encode_inputs

    train_texts = [line.split(",")[0] for line in conflicting[0].read_text().splitlines()[1:]]
    tokens = sum(map(len, encode_inputs(tokenizer, train_texts, "chat", 2048)))  # the texts as the head reads them
    assert result.trained_tokens == tokens * 3  # charged for the 3 epochs trained, not the 8 planned
    # every epoch's checkpoint stays: none was deleted for not being the best
    assert len(list((Path(result.run_dir) / "checkpoints").glob("step-*"))) == 3


def test_early_stopping_without_validation_data_is_refused(tiny_model, tmp_path):
    from tempering.errors import InvalidConfigError

    small = write_jsonl(tmp_path / "small.jsonl", [chat_example(f"q{i}", f"a{i}") for i in range(12)])
    with pytest.raises(InvalidConfigError, match="early_stopping needs validation data") as caught:
        tune(TuneConfig(model=tiny_model, training_file=small, early_stopping=2, evaluate=False))
    assert caught.value.param == "early_stopping"
