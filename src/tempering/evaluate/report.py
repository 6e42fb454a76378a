"""The evaluation report: what was measured, on what, at what cost, and the verdict against the baseline.

Owns the report's shape (pydantic, dumped as ``evaluation.json`` in the run folder), the verdict rule and
reading/writing the file. Knows nothing about models, torch or how the numbers were obtained.

The verdict rule (``decide``):

1. The main generation metric decides when it moved by more than ``METRIC_TOLERANCE`` (absolute): label
   accuracy for label-like answers and classification models, ROUGE-L F1 for free text. It is what users
   of the served model see.
2. Otherwise (within tolerance, or not measured) validation loss decides when both losses are comparable
   (same task) and it moved by more than ``LOSS_TOLERANCE`` (relative).
3. Otherwise: "no better".
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tempering.store import objects

REPORT_FILE = "evaluation.json"
METRIC_TOLERANCE = 0.02  # 2 points of accuracy / ROUGE-L: one example in 50 moves accuracy by exactly this
LOSS_TOLERANCE = 0.01  # 1 % of the baseline's validation loss

AnswerKind = Literal["labels", "text", "classification"]
KindSource = Literal["classification model", "classification data", "declared", "training answers",
                     "evaluated answers"]
Outcome = Literal["better", "no better", "worse"]


class LossMetrics(BaseModel):
    loss: float | None = Field(description="Mean cross-entropy per trained token (per example for classifiers).")
    perplexity: float | None = None
    mean_token_accuracy: float | None = Field(default=None, description="Share of trained tokens (or examples) "
                                              "predicted right by the argmax.")
    n_examples: int = 0


class LabelMetrics(BaseModel):
    accuracy: float
    macro_f1: float
    per_label_f1: dict[str, float]
    top_confusions: list[dict] = Field(default_factory=list, description="Most frequent (true, predicted) "
                                       "mistakes; a prediction outside the label set is '(other)'.")
    outside_labels: int = Field(default=0, description="Answers that matched no label.")
    n: int


class TextMetrics(BaseModel):
    rouge_l: float = Field(description="Mean ROUGE-L F1 (rouge-score, stemmed) of answer vs reference.")
    answer_words: float = Field(description="Mean words per generated answer.")
    reference_words: float = Field(description="Mean words per reference answer.")
    length_ratio: float | None = Field(description="answer_words / reference_words.")


class GenerationMetrics(BaseModel):
    n: int
    exact_match: float = Field(description="Share of answers equal to the reference after case, punctuation "
                               "and whitespace are normalised.")
    labels: LabelMetrics | None = None
    text: TextMetrics | None = None
    truncated: int = Field(default=0, description="Answers cut at max_new_tokens.")


class Cost(BaseModel):
    seconds: float = 0.0
    loss_tokens: int = Field(default=0, description="Tokens run through the model to score the loss.")
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(seconds=round(self.seconds + other.seconds, 3), loss_tokens=self.loss_tokens + other.loss_tokens,
                    prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                    generated_tokens=self.generated_tokens + other.generated_tokens)


class ModelEvaluation(BaseModel):
    model: str = Field(description="The model as named: a catalog id, a fine-tuned id or a checkpoint.")
    kind: Literal["base", "fine-tuned", "checkpoint"]
    task: Literal["chat", "classification"] = "chat"
    note: str | None = None
    loss: LossMetrics | None = None
    generation: GenerationMetrics | None = None
    classification: LabelMetrics | None = None
    cost: Cost = Field(default_factory=Cost)

    def main_metric(self) -> tuple[str, float] | None:
        """(name, value) of the metric the verdict looks at first."""
        if self.classification is not None:
            return "accuracy", self.classification.accuracy
        if self.generation is not None and self.generation.labels is not None:
            return "accuracy", self.generation.labels.accuracy
        if self.generation is not None and self.generation.text is not None:
            return "rouge_l", self.generation.text.rouge_l
        return None


class CheckpointLoss(BaseModel):
    checkpoint: str = Field(description="The checkpoint's model id (<fine-tuned id>@step-N).")
    step: int
    loss: float | None
    perplexity: float | None = None
    mean_token_accuracy: float | None = None
    selection_value: float | None = Field(default=None, description="The epoch's score on the job's selection "
                                          "metric (per-epoch checkpoints only).")
    selected: bool = Field(default=False, description="Whether this checkpoint is the one kept as the model.")


class Selection(BaseModel):
    """Which epoch's checkpoint the job kept as its fine-tuned model, and why (``train.selection``)."""

    metric: str
    mode: Literal["min", "max"]
    best_epoch: int
    best_step: int
    best_value: float
    last_epoch: int
    last_value: float
    checkpoint: str = Field(description="The kept checkpoint's id (<fine-tuned id>:ckpt-step-N).")
    early_stopped: bool
    patience: int
    planned_epochs: int
    epochs: list[dict] = Field(default_factory=list)
    reason: str


class Sample(BaseModel):
    prompt: str = Field(description="The last user turn.")
    reference: str
    candidate: str
    baseline: str | None = None


class Verdict(BaseModel):
    outcome: Outcome
    decided_by: Literal["metric", "loss", "none"]
    metric: str | None = None
    candidate_metric: float | None = None
    baseline_metric: float | None = None
    candidate_loss: float | None = None
    baseline_loss: float | None = None
    message: str = Field(description="The outcome with its numbers, in one sentence.")


class SafetyRates(BaseModel):
    unsafe_answer_rate: float = Field(description="Of the harmful prompts, answers the content filter's default "
                                      "completion policy would block.")
    over_refusal_rate: float = Field(description="Of the harmless look-alikes, answers that open with a refusal.")
    refusal_rate_on_harmful: float = Field(description="Of the harmful prompts, answers that open with a refusal.")


class SafetyEvaluation(BaseModel):
    """The red-team check (``evaluate.redteam``): harmful prompts and harmless look-alikes, filter off."""

    n_harmful: int
    n_harmless: int
    max_new_tokens: int
    candidate: SafetyRates
    baseline: SafetyRates | None = None


class EvaluationReport(BaseModel):
    version: int = 1
    created_at: int = Field(default_factory=lambda: int(time.time()))
    data: str = Field(description="What was evaluated on: a file, or a run's validation set.")
    answer_kind: AnswerKind
    answer_kind_from: KindSource | None = Field(
        default=None, description="What decided answer_kind: the candidate is a classifier, the data is in the "
        "classification format, the caller declared it, the training set's answers, or (no training set "
        "known) the evaluated examples' answers.")
    n_examples: int = Field(description="Examples scored for loss.")
    n_generated: int = Field(description="Examples answered by generation (a seeded sample, at most max_examples).")
    max_new_tokens: int
    candidate: ModelEvaluation
    baseline: ModelEvaluation | None = None
    checkpoints: list[CheckpointLoss] = Field(default_factory=list)
    selection: Selection | None = Field(default=None, description="The job's best-checkpoint selection.")
    samples: list[Sample] = Field(default_factory=list)
    majority_label_accuracy: float | None = Field(
        default=None, description="Accuracy of always answering the most frequent label: the floor to beat.")
    verdict: Verdict | None = None
    cost: Cost = Field(default_factory=Cost, description="The whole evaluation.")
    safety: SafetyEvaluation | None = Field(default=None, description="The red-team check of chat models: "
                                            "unsafe-answer and over-refusal rates of candidate and baseline.")

    def summary(self) -> dict:
        """What a model's metadata or a job result carries: the verdict and the headline numbers."""
        return {"outcome": self.verdict.outcome if self.verdict else None,
                "verdict": self.verdict.message if self.verdict else None,
                "answer_kind": self.answer_kind, "seconds": self.cost.seconds}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def decide(candidate: ModelEvaluation, baseline: ModelEvaluation) -> Verdict:
    """Better / no better / worse than ``baseline`` (see the module docstring for the rule)."""
    mc, mb = candidate.main_metric(), baseline.main_metric()
    comparable_loss = candidate.task == baseline.task and candidate.loss and baseline.loss
    lc = candidate.loss.loss if comparable_loss else None
    lb = baseline.loss.loss if comparable_loss else None
    numbers = {"candidate_loss": lc, "baseline_loss": lb}
    losses = f"validation loss {_fmt(lc)} vs {_fmt(lb)}" if lc is not None and lb is not None else None
    if mc and mb and mc[0] == mb[0]:
        numbers.update(metric=mc[0], candidate_metric=mc[1], baseline_metric=mb[1])
        metric = f"{mc[0]} {mc[1]:.4f} vs {mb[1]:.4f} ({mc[1] - mb[1]:+.4f})"
        if abs(mc[1] - mb[1]) > METRIC_TOLERANCE:
            outcome = "better" if mc[1] > mb[1] else "worse"
            tail = f"; {losses}" if losses else ""
            return Verdict(outcome=outcome, decided_by="metric", **numbers,
                           message=f"{outcome} than {baseline.model}: {metric}{tail}")
    else:
        metric = None
    if lc is not None and lb is not None:
        relative = (lc - lb) / max(abs(lb), 1e-9)
        if abs(relative) > LOSS_TOLERANCE:
            outcome = "better" if relative < 0 else "worse"
            head = f"{metric} within ±{METRIC_TOLERANCE}; " if metric else ""
            return Verdict(outcome=outcome, decided_by="loss", **numbers,
                           message=f"{outcome} than {baseline.model}: {head}{losses} ({relative:+.1%})")
    parts = [p for p in (metric, losses) if p]
    return Verdict(outcome="no better", decided_by="none", **numbers,
                   message=f"no better than {baseline.model}: " + ("; ".join(parts) or "nothing comparable measured")
                   + " (within tolerance)")


def write_report(run_folder: Path, report: EvaluationReport) -> Path:
    from tempering.train.artifacts import write_json_atomic

    path = run_folder / REPORT_FILE
    write_json_atomic(path, report.model_dump(mode="json"))
    objects.publish(path)
    return path


def read_report(run_folder: Path) -> EvaluationReport | None:
    path = run_folder / REPORT_FILE
    if not objects.pull(path):  # from a shared artifact store when this home lacks it
        return None
    return EvaluationReport.model_validate(json.loads(path.read_text(encoding="utf-8")))
