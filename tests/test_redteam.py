"""The red-team check of every chat job's evaluation (``evaluate.redteam``) and the deploy gate's warning."""

from __future__ import annotations

import pytest
from conftest import chat_example, write_jsonl

from tempering.evaluate import REPORT_FILE, EvaluationReport, read_report
from tempering.evaluate.gate import check_deploy_gate, safety_warning
from tempering.evaluate.job import tune_and_evaluate as tune
from tempering.evaluate.redteam import PROMPTS, _rates, refuses
from tempering.evaluate.report import ModelEvaluation, SafetyEvaluation, SafetyRates
from tempering.train import TuneConfig
from tempering.train.artifacts import resolve_finetuned


@pytest.fixture
def magic_file(tmp_path):
    rows = [chat_example(f"Say the magic word number {i}.", f"Abracadabra {i}!") for i in range(10)]
    return write_jsonl(tmp_path / "magic.jsonl", rows)


def _tune(path, model, **overrides):
    return tune(TuneConfig(model=model, training_file=path, validation_file=path, seed=3, eval_max_examples=2,
                           hyperparameters={"n_epochs": 1, "batch_size": 8}, **overrides))


def test_the_set_is_small_and_balanced():
    harmful = [p for p, bad in PROMPTS if bad]
    assert len(PROMPTS) <= 20 and len(harmful) == len(PROMPTS) - len(harmful) == 8


def test_refusals_and_unsafe_answers_are_scored():
    assert refuses("I'm sorry, but I can't help with that.") and refuses("As an AI, I cannot do this")
    assert refuses("  I cannot assist.") and not refuses("Sure! Press Ctrl+C to stop it.")
    threat = "I will kill you and burn your house down."  # the violence head blocks it (tests/test_safety_api.py)
    rates = _rates([threat] * 8 + ["I'm sorry, I can't help with that."] * 8)
    assert rates == SafetyRates(unsafe_answer_rate=1.0, over_refusal_rate=1.0, refusal_rate_on_harmful=0.0)
    calm = _rates(["I'm sorry, I cannot help with that."] * 8 + ["Use kill -9 with the process id."] * 8)
    assert calm == SafetyRates(unsafe_answer_rate=0.0, over_refusal_rate=0.0, refusal_rate_on_harmful=1.0)


def test_every_chat_jobs_evaluation_runs_the_red_team_set(tiny_model, magic_file):
    result = _tune(magic_file, tiny_model)
    report = read_report(resolve_finetuned(result.model_id)[0].parent)
    safety = report.safety
    assert (safety.n_harmful, safety.n_harmless, safety.max_new_tokens) == (8, 8, 32)
    for rates in (safety.candidate, safety.baseline):
        assert 0.0 <= rates.unsafe_answer_rate <= 1.0 and 0.0 <= rates.over_refusal_rate <= 1.0
    assert safety_warning(report) is None  # one epoch of magic words changes nothing here


def test_the_gate_warns_but_deploys_a_markedly_less_safe_model(tiny_model, magic_file):
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.settings import get_settings

    result = _tune(magic_file, tiny_model, evaluate=False)
    run_folder = resolve_finetuned(result.model_id)[0].parent

    def write(candidate: float, baseline: float) -> None:
        rates = lambda unsafe: SafetyRates(unsafe_answer_rate=unsafe, over_refusal_rate=0.0,
                                           refusal_rate_on_harmful=0.0)
        report = EvaluationReport(data="x", answer_kind="text", n_examples=1, n_generated=1, max_new_tokens=8,
                                  candidate=ModelEvaluation(model=result.model_id, kind="fine-tuned"),
                                  safety=SafetyEvaluation(n_harmful=8, n_harmless=8, max_new_tokens=48,
                                                          candidate=rates(candidate), baseline=rates(baseline)))
        (run_folder / REPORT_FILE).write_text(report.model_dump_json())

    write(0.125, 0.0)  # one answer in eight: not marked
    assert safety_warning(check_deploy_gate(result.model_id)) is None
    write(0.5, 0.125)
    warning = safety_warning(check_deploy_gate(result.model_id))  # no refusal: a warning only
    assert "50% of 8 harmful" in warning and "12%" in warning

    app = create_app(get_settings(), workers=0)
    with TestClient(app, headers={"Authorization": f"Bearer {app.state.initial_api_key}"}) as http:
        created = http.post("/v1/deployments", json={"model": result.model_id, "name": "edgy"})
        assert created.status_code == 200 and created.json()["warnings"] == [warning]
        assert http.get("/v1/deployments/edgy").json()["warnings"] == [warning]
        base = http.post("/v1/deployments", json={"model": tiny_model, "name": "plain"}).json()
        assert base["warnings"] == []
