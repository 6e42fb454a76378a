"""LoRA training on a tiny random model: what changes, what must not, what is written, and the loss."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tempering.data import encode_chat
from tempering.errors import InvalidConfigError, InvalidDataError
from tempering.train import TuneConfig, tune
from tempering.train.artifacts import RESULT_COLUMNS, resolve_finetuned
from tempering.train.batching import collate, epoch_batches
from tempering.train.checkpoint import COMPLETE, list_checkpoints
from tempering.train.config import parse_config, resolve_hyperparameters
from tempering.train.loss import sparse_lm_loss


def _config(train_file, model, **overrides) -> TuneConfig:
    hp = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5.0}
    return TuneConfig(model=model, training_file=train_file, seed=3, hyperparameters=hp, **overrides)


def test_sparse_loss_equals_the_full_lm_loss(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    examples = [encode_chat(tokenizer, [{"role": "user", "content": f"q {'x ' * i}"},
                                        {"role": "assistant", "content": f"answer {i}"}]) for i in range(4)]
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        full = model(**batch).loss
        sparse = sparse_lm_loss(model, batch)
    torch.testing.assert_close(sparse.mean, full, rtol=1e-5, atol=1e-5)
    assert sparse.n_tokens == sum(e.n_trained for e in examples)


def test_tune_trains_the_adapter_only_and_writes_a_complete_run(tiny_model, qa_file, tiny_model_dir):
    from safetensors.torch import load_file

    events = []
    result = tune(_config(qa_file, tiny_model, suffix="colors"), on_event=events.append)

    assert result.model_id.startswith(f"ft:{tiny_model}:colors:")
    folder, meta = resolve_finetuned(result.model_id)
    assert {"adapter_config.json", "adapter_model.safetensors", "tempering.json"} <= {p.name for p in folder.iterdir()}
    assert meta["base_model"] == tiny_model and meta["data_sha256"]["training_file"]
    assert meta["hyperparameters"]["n_epochs"] == 2 and meta["versions"]["torch"]
    assert result.n_train_examples == 18 and result.n_valid_examples == 2  # seeded 10 % hold-out

    # LoRA B starts at zero, so a non-zero B in the saved adapter proves it learned something.
    adapter = load_file(folder / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())

    run = folder.parent
    checkpoints = list_checkpoints(run)
    assert len(checkpoints) == 2  # one per epoch
    for checkpoint in checkpoints:
        assert {COMPLETE, "training_state.json", "training_state.safetensors", "adapter_model.safetensors",
                "metrics.json"} <= {p.name for p in checkpoint.iterdir()}
    with (run / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == RESULT_COLUMNS
    assert rows[-1]["full_valid_loss"] and float(rows[-1]["full_valid_loss"]) == pytest.approx(result.valid_loss)
    logged = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in logged] == [e["type"] for e in events]
    assert logged[-1]["type"] == "succeeded"
    assert sum(e["type"] == "metrics" for e in logged) == 10  # 18 examples / batch 4 → 5 steps × 2 epochs


def test_fit_changes_adapter_weights_and_leaves_base_weights_alone(tiny_model, qa_file):
    from tempering.train.recipe import fit, setup

    state = setup(_config(qa_file, tiny_model))
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    fit(state)
    after = dict(state.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    assert all(not after[n].requires_grad and torch.equal(before[n], after[n]) for n in base)
    assert all(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n)


def test_loss_decreases_on_a_repeated_batch(tiny_model, tmp_path):
    from conftest import chat_example, write_jsonl

    rows = [chat_example("Say the magic word.", "Abracadabra!")] * 12
    path = write_jsonl(tmp_path / "same.jsonl", rows)
    config = TuneConfig(model=tiny_model, training_file=path, validation_file=path, seed=3,
                        hyperparameters={"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 10.0})
    result = tune(config)
    assert result.valid_loss < result.base_valid_loss - 1.0


def test_continue_training_from_a_fine_tuned_model(tiny_model, qa_file):
    first = tune(_config(qa_file, tiny_model))
    second = tune(_config(qa_file, first.model_id, suffix="more"))
    _, meta = resolve_finetuned(second.model_id)
    assert meta["base_model"] == tiny_model and meta["parent_model"] == first.model_id
    assert second.model_id.startswith(f"ft:{tiny_model}:more:")
    assert second.base_valid_loss == pytest.approx(first.base_valid_loss)  # same catalog base


def test_invalid_data_stops_before_training(tiny_model, tmp_path, tempering_home):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n' * 12)
    with pytest.raises(InvalidDataError):
        tune(_config(bad, tiny_model))
    assert not (tempering_home / "runs").exists()


def test_config_errors_name_every_field():
    with pytest.raises(InvalidConfigError) as info:
        parse_config({"training_file": "x.jsonl", "suffix": "no spaces allowed",
                      "hyperparameters": {"n_epochs": 0, "learning_rate_multiplier": -1}, "colour": 1})
    message = info.value.message
    for field in ("suffix", "hyperparameters.n_epochs", "hyperparameters.learning_rate_multiplier", "colour"):
        assert field in message


@pytest.mark.parametrize(("n", "epochs", "batch"), [(10, 10, 1), (40, 3, 2), (102, 3, 4), (770, 3, 32),
                                                    (20_000, 1, 32)])
def test_auto_hyperparameters(n, epochs, batch, tmp_path):
    config = TuneConfig(training_file=tmp_path / "x.jsonl")
    hp = resolve_hyperparameters(config, n, "smollm2", seed=1)
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate) == (epochs, batch, 1e-3)


@pytest.mark.parametrize(("n", "classes", "epochs", "batch"), [
    (693, 77, 10, 16),  # BANKING77, 9 per intent: each seen 90 times
    (1_540, 77, 5, 16),  # 20 per intent
    (300, 77, 10, 8),  # under 4 per intent: capped at 10 epochs
    (135, 3, 3, 4), (72, 2, 3, 2), (20_000, 77, 1, 32),  # enough per class: the general rule
    (693, None, 3, 32),  # classes unknown: the general rule
])
def test_auto_hyperparameters_for_few_examples_per_class(n, classes, epochs, batch, tmp_path):
    config = TuneConfig(task="classification", training_file=tmp_path / "x.csv")
    hp = resolve_hyperparameters(config, n, "smollm2", seed=1, n_classes=classes)
    assert (hp.n_epochs, hp.batch_size) == (epochs, batch)
    chat = resolve_hyperparameters(TuneConfig(training_file=tmp_path / "x.jsonl"), n, "smollm2", seed=1,
                                   n_classes=classes)
    assert (chat.n_epochs, chat.batch_size) == (epochs, batch)  # a chat job answering with labels: the same rule
    given = TuneConfig(task="classification", training_file=tmp_path / "x.csv",
                       hyperparameters={"n_epochs": 3, "batch_size": 32})
    hp = resolve_hyperparameters(given, n, "smollm2", seed=1, n_classes=classes)
    assert (hp.n_epochs, hp.batch_size) == (3, 32)  # a given value is never overridden


def test_the_classes_a_job_learns_come_from_its_labels_or_its_label_answers(tmp_path):
    from tempering.train.jobdata import class_count

    def chat(question, answer):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    labels = ["card_arrival", "lost_card", "top_up"] * 10
    answers = [chat(f"question {i}", label) for i, label in enumerate(labels)]
    chat_job = TuneConfig(training_file=tmp_path / "x.jsonl")
    assert class_count(answers, None, chat_job) == 3  # repeated short answers: labels
    free = [chat(f"question {i}", f"A longer answer number {i}, in words.") for i in range(30)]
    assert class_count(free, None, chat_job) is None  # free text: no classes
    # labels as long as BANKING77's (48 characters): the evaluation reads them as labels, so must the epochs rule
    # (it once asked 40, the data report's limit, and gave BANKING77's chat job 3 epochs instead of 9)
    long = ["balance_not_updated_after_cheque_or_cash_deposit", "card_arrival"] * 10
    assert class_count([chat(f"question {i}", label) for i, label in enumerate(long)], None, chat_job) == 2
    classifier = TuneConfig(task="classification", training_file=tmp_path / "x.csv")
    assert class_count(answers, None, classifier) == 3  # the label taken from the assistant turn
    assert class_count(free[:4], ["a", "b", "a", "c"], classifier) == 3  # a label column


def test_batches_are_length_grouped_deterministic_and_complete():
    lengths = [(i * 37) % 100 + 1 for i in range(100)]
    batches = epoch_batches(lengths, 8, seed=5, epoch=1)
    assert batches == epoch_batches(lengths, 8, seed=5, epoch=1)
    assert batches != epoch_batches(lengths, 8, seed=5, epoch=2)
    assert sorted(i for b in batches for i in b) == list(range(100))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.2 * sum(lengths)  # grouping keeps padding small
