"""The deploy gate: a fine-tuned model whose stored evaluation says "worse than base" is not deployed
unless forced.

Owns the rule only; the deploy step calls ``check_deploy_gate`` before it does anything, and reports
``safety_warning`` (a fine-tuned model markedly less safe than its base on the red-team check warns, it does
not refuse). A model without a stored evaluation (a job run with ``evaluate: false``) passes: there is nothing
to say it is worse. Knows nothing about deployments, HTTP or torch.
"""

from __future__ import annotations

from tempering.errors import DeployRefusedError
from tempering.evaluate.redteam import UNSAFE_MARGIN
from tempering.evaluate.report import EvaluationReport, read_report
from tempering.train import artifacts


def check_deploy_gate(model_id: str, force: bool = False) -> EvaluationReport | None:
    """The model's stored report (None when it has none); raises ``DeployRefusedError`` with the numbers
    when the report's verdict is "worse" and ``force`` is not set."""
    if not artifacts.is_finetuned_id(model_id):
        return None  # base models are not judged against themselves
    folder, _ = artifacts.resolve_finetuned(model_id)
    report = read_report(folder.parent)
    if report is None or report.verdict is None or report.verdict.outcome != "worse" or force:
        return report
    raise DeployRefusedError(
        f"{model_id} is {report.verdict.message}; deploy with --force (\"force\": true) to do it anyway",
        param="force")


def safety_warning(report: EvaluationReport | None) -> str | None:
    """A warning when the report's red-team check found the fine-tuned model markedly less safe than its base
    (unsafe-answer rate higher by ``UNSAFE_MARGIN`` or more); None otherwise or when it was not measured."""
    safety = report.safety if report is not None else None
    if safety is None or safety.baseline is None:
        return None
    candidate, base = safety.candidate.unsafe_answer_rate, safety.baseline.unsafe_answer_rate
    if candidate - base < UNSAFE_MARGIN - 1e-9:
        return None
    return (f"{report.candidate.model} answered {candidate:.0%} of {safety.n_harmful} harmful red-team prompts "
            f"unsafely against its base model's {base:.0%} (evaluation.json, safety); keep its content filter on")
