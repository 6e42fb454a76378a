"""Evaluation on the tiny model: the automatic report of every job, `tempering eval` on every format and on
checkpoints, the verdict rule and the deploy gate."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import chat_example, write_jsonl
from tempering.cli.main import app
from tempering.errors import DeployRefusedError
from tempering.evaluate import REPORT_FILE, EvaluationReport, check_deploy_gate, decide, read_report
from tempering.evaluate.metrics import OTHER, detect_labels, to_label, training_labels
from tempering.evaluate.report import GenerationMetrics, LossMetrics, ModelEvaluation, TextMetrics
from tempering.evaluate.job import tune_and_evaluate as tune
from tempering.train import TuneConfig
from tempering.train.artifacts import resolve_finetuned

runner = CliRunner()
LABELS = ["refund", "card", "transfer"]


def _labelled_rows(n: int = 15) -> list[dict]:
    return [chat_example(f"Help me with request {i} about my {LABELS[i % 3]}", LABELS[i % 3]) for i in range(n)]


def _tune(path, model, hp=None, **overrides):
    hp = hp or {"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 10.0}
    return tune(TuneConfig(model=model, training_file=path, validation_file=path, seed=3, hyperparameters=hp,
                           **overrides))


@pytest.fixture
def magic_file(tmp_path):
    rows = [chat_example(f"Say the magic word number {i}.", f"Abracadabra {i}!") for i in range(12)]
    return write_jsonl(tmp_path / "magic.jsonl", rows)


def test_every_job_stores_a_report_and_training_on_validation_beats_base(tiny_model, magic_file):
    events = []
    result = tune(TuneConfig(model=tiny_model, training_file=magic_file, validation_file=magic_file, seed=3,
                             checkpoint_every_steps=1, eval_max_examples=4,
                             hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10.0}),
                  on_event=events.append)
    report = read_report(resolve_finetuned(result.model_id)[0].parent)
    assert report is not None and (resolve_finetuned(result.model_id)[0].parent / REPORT_FILE).is_file()
    assert report.verdict.outcome == "better" and result.evaluation["outcome"] == "better"
    assert report.answer_kind == "text" and report.n_examples == 12 and report.n_generated == 4
    cand, base = report.candidate, report.baseline
    assert (cand.kind, base.kind, base.model) == ("fine-tuned", "base", tiny_model)
    assert cand.loss.loss == pytest.approx(result.valid_loss) and base.loss.loss == pytest.approx(
        result.base_valid_loss)
    assert cand.loss.perplexity > 0 and cand.loss.mean_token_accuracy is not None
    for model in (cand, base):
        assert model.generation.n == 4 and 0.0 <= model.generation.exact_match <= 1.0
        assert model.generation.text.reference_words == 2.0 and model.generation.labels is None
        assert model.cost.prompt_tokens > 0 and model.cost.seconds > 0
    assert report.cost.seconds == pytest.approx(cand.cost.seconds + base.cost.seconds, abs=0.01)
    assert len(report.samples) == 4 and report.samples[0].reference == "Abracadabra 0!"
    assert report.samples[0].prompt == "Say the magic word number 0." and report.samples[0].baseline is not None
    # every kept checkpoint has a loss, mid-epoch ones scored here; the last one is the final model
    steps = [c.step for c in report.checkpoints]
    assert steps == list(range(1, 10)) and all(c.loss is not None for c in report.checkpoints)
    assert report.checkpoints[-1].loss == pytest.approx(result.valid_loss, rel=1e-4)
    assert report.checkpoints[0].checkpoint == f"{result.model_id}@step-000001"
    assert any(e["type"] == "evaluation" and "better than" in e["message"] for e in events)
    json.loads((result.run_dir and open(f"{result.run_dir}/{REPORT_FILE}").read()))  # plain JSON on disk

    # the same model on demand, a checkpoint by id and by folder, and the gate lets a better model through
    cli = runner.invoke(app, ["eval", result.model_id, "--data", str(magic_file), "--json", "--max-new-tokens", "8"])
    assert cli.exit_code == 0, cli.output
    on_demand = EvaluationReport.model_validate_json(cli.stdout)
    assert on_demand.candidate.loss.loss == pytest.approx(result.valid_loss, rel=1e-3)  # merged == unmerged
    assert on_demand.verdict.outcome == "better"
    for name in (f"{result.model_id}@step-2", f"{result.run_dir}/checkpoints/step-000002"):
        cli = runner.invoke(app, ["eval", name, "--data", str(magic_file), "--json", "--max-examples", "2",
                                  "--max-new-tokens", "4", "--compare", "none"])
        assert cli.exit_code == 0, cli.output
        checkpoint = json.loads(cli.stdout)
        assert checkpoint["candidate"]["kind"] == "checkpoint" and checkpoint["baseline"] is None
        assert checkpoint["candidate"]["model"] == f"{result.model_id}@step-000002"
    assert check_deploy_gate(result.model_id).verdict.outcome == "better"


def test_label_answers_get_accuracy_and_f1(tiny_model, tmp_path):
    path = write_jsonl(tmp_path / "labels.jsonl", _labelled_rows())
    result = _tune(path, tiny_model)
    report = read_report(resolve_finetuned(result.model_id)[0].parent)
    assert report.answer_kind == "labels" and report.majority_label_accuracy == pytest.approx(1 / 3)
    assert report.answer_kind_from == "training answers"
    labels = report.candidate.generation.labels
    assert set(labels.per_label_f1) == set(LABELS) and labels.n == 15
    assert 0.0 <= labels.macro_f1 <= 1.0 and 0.0 <= labels.accuracy <= 1.0
    assert report.verdict.outcome == "better", report.verdict.message


# ten labels, one longer than data.findings' 40 characters, as BANKING77's longest intents are
INTENTS = [f"intent_{name}" for name in "abcdefghi"] + ["balance_not_updated_after_cheque_or_cash_deposit"]


@pytest.fixture
def intent_files(tmp_path):
    """Ten intents: three training examples each, one validation example each. The validation answers never
    repeat, so only the training set shows they are labels (BANKING77's situation, small)."""
    train = [chat_example(f"Request {i} for {label}", label) for i in range(3) for label in INTENTS]
    valid = [chat_example(f"Another request for {label}", label) for label in INTENTS]
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "valid.jsonl", valid)


def test_job_detects_labels_from_its_training_set_unless_declared(tiny_model, intent_files):
    train, valid = intent_files
    hp = {"n_epochs": 1, "batch_size": 8}
    result = tune(TuneConfig(model=tiny_model, training_file=train, validation_file=valid, seed=3,
                             hyperparameters=hp, eval_max_examples=3))
    report = read_report(resolve_finetuned(result.model_id)[0].parent)
    assert (report.answer_kind, report.answer_kind_from) == ("labels", "training answers")
    assert set(report.candidate.generation.labels.per_label_f1) == set(INTENTS)
    assert report.baseline.generation.labels is not None and report.candidate.generation.text is None
    # label answers are generated only as far as a label can go: the longest label plus a few tokens
    assert report.baseline.cost.generated_tokens <= 3 * (17 + 8)  # the longest label is 17 tokens

    declared = tune(TuneConfig(model=tiny_model, training_file=train, validation_file=valid, seed=3,
                               hyperparameters=hp, eval_max_examples=3, eval_answers="text"))
    report = read_report(resolve_finetuned(declared.model_id)[0].parent)
    assert (report.answer_kind, report.answer_kind_from) == ("text", "declared")
    assert report.candidate.generation.text is not None


def test_eval_detects_labels_from_train_data_and_obeys_answers(tiny_model, intent_files):
    train, valid = intent_files
    common = ["eval", tiny_model, "--data", str(valid), "--json", "--max-examples", "2", "--max-new-tokens", "3"]

    def kind(*extra):
        cli = runner.invoke(app, [*common, *extra])
        assert cli.exit_code == 0, cli.output
        report = json.loads(cli.stdout)
        return report["answer_kind"], report["answer_kind_from"]

    assert kind() == ("text", "evaluated answers")  # ten distinct answers in ten: no label set in sight
    assert kind("--train-data", str(train)) == ("labels", "training answers")
    assert kind("--train-data", str(train), "--answers", "text") == ("text", "declared")
    assert kind("--answers", "labels") == ("labels", "declared")


def test_training_labels_rule():
    answers = [label for _ in range(3) for label in INTENTS]
    assert training_labels(answers, ["Intent_A.", "intent_b"]) == sorted(INTENTS)  # normalised, they fall in
    assert training_labels(answers, ["intent_a", "something else"]) is None  # half the references outside
    assert training_labels(answers[:9], ["intent_a"]) is None  # too few training answers to tell
    assert training_labels([f"answer {i}" for i in range(30)], ["answer 1"]) is None  # nothing repeats
    assert training_labels(["a long answer " * 3] * 30, ["a long answer " * 3]) is None  # 9 words: not a label


def test_evaluate_can_be_switched_off(tiny_model, magic_file):
    result = _tune(magic_file, tiny_model, evaluate=False)
    assert result.evaluation is None
    assert read_report(resolve_finetuned(result.model_id)[0].parent) is None
    assert check_deploy_gate(result.model_id) is None  # nothing says it is worse


def test_classification_job_is_evaluated_through_the_classifier(tiny_model, tmp_path):
    rows = ["text,category"] + [f"I need help with my {label} number {i},{label}" for i in range(6) for label in LABELS]
    path = tmp_path / "intents.csv"
    path.write_text("\n".join(rows) + "\n")
    result = _tune(path, tiny_model, task="classification", eval_max_examples=6)
    report = read_report(resolve_finetuned(result.model_id)[0].parent)
    assert report.answer_kind == "classification"
    assert report.candidate.task == "classification" and report.candidate.classification.n == 6
    assert report.candidate.cost.seconds > 0 and report.candidate.cost.loss_tokens > 0
    assert set(report.candidate.classification.per_label_f1) == set(LABELS)
    assert report.baseline.task == "chat" and report.baseline.loss is None  # a chat loss is no baseline here
    assert report.baseline.generation.labels is not None and report.verdict is not None


FORMATS = {
    "chat": lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
    "prompt-completion": lambda q, a: {"prompt": q, "completion": a},
    "instruction": lambda q, a: {"instruction": q, "output": a},
    "text": lambda q, a: {"text": f"<|user|>\n{q}<|end|>\n<|assistant|>\n{a}<|end|>"},
}


@pytest.mark.parametrize("fmt", [*FORMATS, "classification"])
def test_eval_reads_every_format(tiny_model, tmp_path, fmt):
    pairs = [(f"Help me with request {i} about my {LABELS[i % 3]}", LABELS[i % 3]) for i in range(12)]
    if fmt == "classification":
        path = tmp_path / "data.csv"
        path.write_text("text,label\n" + "".join(f"{q},{a}\n" for q, a in pairs))
    else:
        path = write_jsonl(tmp_path / "data.jsonl", [FORMATS[fmt](q, a) for q, a in pairs])
    cli = runner.invoke(app, ["eval", tiny_model, "--data", str(path), "--json", "--max-examples", "3",
                              "--max-new-tokens", "2"])
    assert cli.exit_code == 0, cli.output
    report = json.loads(cli.stdout)
    assert report["answer_kind"] == "labels" and report["n_generated"] == 3 and report["baseline"] is None
    assert report["candidate"]["loss"]["loss"] > 0 and report["candidate"]["generation"]["labels"]["n"] == 3
    table = runner.invoke(app, ["eval", tiny_model, "--data", str(path), "--max-examples", "2",
                                "--max-new-tokens", "2", "--answers", "text"])
    assert table.exit_code == 0 and "answered, text" in table.stdout


def _model(loss: float, rouge: float, name: str = "m") -> ModelEvaluation:
    text = TextMetrics(rouge_l=rouge, answer_words=3, reference_words=3, length_ratio=1.0)
    return ModelEvaluation(model=name, kind="fine-tuned", loss=LossMetrics(loss=loss),
                           generation=GenerationMetrics(n=50, exact_match=0.0, text=text))


def test_verdict_rule_metric_first_then_loss_with_tolerances():
    base = _model(2.0, 0.40, "base")
    assert decide(_model(2.5, 0.50), base).outcome == "better"  # the metric decides when it moves
    assert decide(_model(1.5, 0.30), base).outcome == "worse"
    assert decide(_model(1.5, 0.41), base).outcome == "better"  # metric within ±0.02: the loss decides
    assert decide(_model(2.1, 0.39), base).decided_by == "loss"
    verdict = decide(_model(2.01, 0.41), base)
    assert verdict.outcome == "no better" and "2.0100 vs 2.0000" in verdict.message


def test_label_helpers():
    assert to_label("Refund.", LABELS) == "refund" and to_label("card please", LABELS) == "card"
    assert to_label("I cannot say", LABELS) == OTHER
    assert detect_labels([r["messages"] for r in _labelled_rows(12)]) == sorted(LABELS)
    assert detect_labels([r["messages"] for r in _labelled_rows(4)]) is None  # too few to tell


def test_deploy_gate_refuses_worse_unless_forced(tiny_model, magic_file):
    result = _tune(magic_file, tiny_model, evaluate=False, hp={"n_epochs": 1, "batch_size": 8})
    run_folder = resolve_finetuned(result.model_id)[0].parent
    worse = decide(_model(2.5, 0.30, result.model_id), _model(2.0, 0.40, tiny_model))
    report = EvaluationReport(data="x", answer_kind="text", n_examples=50, n_generated=50, max_new_tokens=64,
                              candidate=_model(2.5, 0.30, result.model_id), verdict=worse)
    (run_folder / REPORT_FILE).write_text(report.model_dump_json())
    with pytest.raises(DeployRefusedError) as refused:
        check_deploy_gate(result.model_id)
    assert "worse" in refused.value.message and "0.3000 vs 0.4000" in refused.value.message
    assert refused.value.code == "worse_than_base"
    assert check_deploy_gate(result.model_id, force=True).verdict.outcome == "worse"
