"""Evaluation: did fine-tuning help? Base vs fine-tuned (or any two models) on the same examples.

``report`` (the report's shape, the verdict rule, ``evaluation.json``), ``metrics`` (text metrics on
strings), ``measure`` (one model's numbers), ``compare`` (the plan of an evaluation, ``evaluate_file``), ``job`` (the
automatic report after ``tune``, and ``tune_and_evaluate``), ``redteam`` (the red-team safety check) and ``gate`` (the deploy gate). Knows nothing about HTTP or printing.
"""

from tempering.evaluate.gate import check_deploy_gate
from tempering.evaluate.report import REPORT_FILE, EvaluationReport, decide, read_report

__all__ = ["REPORT_FILE", "EvaluationReport", "check_deploy_gate", "decide", "evaluate_file", "read_report"]


def evaluate_file(*args, **kwargs) -> EvaluationReport:
    """See ``tempering.evaluate.compare.evaluate_file``."""
    from tempering.evaluate.compare import evaluate_file as run

    return run(*args, **kwargs)
