"""A candidate model against a baseline on the same examples: the evaluation report.

Owns the plan of an evaluation: which examples are scored (a seeded sample of at most ``max_examples``),
whether answers are labels, free text or a classifier's classes (``answer_kind``: declared, else read from
the training answers when the training set is known, else from the evaluated answers), loading one model at
a time (so a GPU holds one copy), the side-by-side samples and the verdict. ``evaluate_file`` is the
on-demand entry (CLI, library); ``job.evaluate_job`` feeds a finished run's validation set through
``evaluate_examples``. Knows nothing about HTTP, printing or the training loop.
"""

from __future__ import annotations

import gc
import random
from pathlib import Path
from typing import Literal

from tempering.errors import InvalidConfigError, InvalidDataError
from tempering.evaluate import measure
from tempering.evaluate.metrics import (
    MIN_EXAMPLES_TO_DETECT_LABELS,
    detect_labels,
    final_answer,
    majority_accuracy,
    training_labels,
)
from tempering.evaluate.report import (
    CheckpointLoss,
    Cost,
    EvaluationReport,
    KindSource,
    LossMetrics,
    ModelEvaluation,
    Sample,
    decide,
)
from tempering.train import refs

DEFAULT_MAX_NEW_TOKENS = 64
N_SAMPLES = 5  # side-by-side answers kept in the report
# A label answer is read from its first line: generating past the longest label (plus room for punctuation or
# a following word) cannot change which label it names, and a chatty base model would spend 64 tokens a time.
LABEL_SLACK_TOKENS = 8
Answers = Literal["auto", "labels", "text"]


def sample_indices(n: int, max_examples: int | None, seed: int = 0) -> list[int]:
    """A seeded, order-preserving sample of at most ``max_examples`` of ``n`` indices."""
    if max_examples is None or n <= max_examples:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), max_examples))  # noqa: S311 - seeded, not a secret


def _free(obj) -> None:
    del obj
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def answer_kind(candidate: refs.Target, examples: list[list[dict]], references: list[str], *,
                declared_labels: list[str] | None, answers: Answers,
                training_answers: list[str] | None) -> tuple[str, list[str] | None, KindSource]:
    """(answer kind, label set, what decided it) for ``examples`` whose sampled references are ``references``.

    Declared beats detected; detection reads the training answers when there are enough of them (a label
    task's training set shows its closed label set; its validation sample often does not), else the
    evaluated answers."""
    answers_of_all = [final_answer(m) for m in examples]
    if candidate.task == "classification":
        return "classification", sorted(set(candidate.labels or []) | set(references)), "classification model"
    if answers == "text":
        return "text", None, "declared"
    if declared_labels:
        return "labels", sorted(set(declared_labels)), "classification data"
    if answers == "labels":
        return "labels", sorted(set(answers_of_all) | set(training_answers or [])), "declared"
    if training_answers is not None and len(training_answers) >= MIN_EXAMPLES_TO_DETECT_LABELS:
        label_set = training_labels(training_answers, answers_of_all)
        return ("labels" if label_set else "text"), label_set, "training answers"
    label_set = detect_labels(examples)
    return ("labels" if label_set else "text"), label_set, "evaluated answers"


def _label_budget(tokenizer, labels: list[str], max_new_tokens: int) -> int:
    """New tokens enough to name any label (see ``LABEL_SLACK_TOKENS``), at most ``max_new_tokens``."""
    ids = tokenizer(labels, add_special_tokens=False)["input_ids"] if labels else []
    longest = max(map(len, ids), default=0)
    return min(max_new_tokens, longest + LABEL_SLACK_TOKENS)


def _rounded(cost: Cost) -> Cost:
    return cost.model_copy(update={"seconds": round(cost.seconds, 3)})


def _measure(target: refs.Target, examples: list[list[dict]], generated: list[list[dict]], *,
             labels: list[str] | None, declared: list[str] | None, max_new_tokens: int, device: str,
             loss: LossMetrics | None, with_loss: bool) -> tuple[ModelEvaluation, list[str]]:
    """One model's evaluation and its answers to ``generated`` (predicted labels for a classifier)."""
    from tempering.train.classify import texts_and_labels

    evaluation = ModelEvaluation(model=target.name, kind=target.kind, task=target.task, loss=loss)
    cost = Cost()
    if target.task == "classification":
        if not generated:
            return evaluation, []
        from tempering.serve.classify import load_classifier_target

        classifier = load_classifier_target(target, device)
        texts, truth = texts_and_labels(generated, declared)
        metrics, computed, predicted, cost = measure.classifier_metrics(
            classifier, texts, truth, with_loss=with_loss and loss is None)
        evaluation.classification, evaluation.loss = metrics, loss or computed
        evaluation.cost = _rounded(cost)
        _free(classifier)
        return evaluation, predicted
    from tempering.serve.local import load_chat

    chat = load_chat(target, device)
    if with_loss and loss is None and examples:
        evaluation.loss, cost = measure.chat_loss(chat, examples)
    texts = []
    if generated:
        budget = max_new_tokens if labels is None else _label_budget(chat.tokenizer, labels, max_new_tokens)
        texts, truncated, generation_cost = measure.answers(chat, generated, budget, labels)
        cost = cost + generation_cost
        if declared is not None:  # a classification file's labels are the references
            generated = [m[:-1] + [{"role": "assistant", "content": y}] for m, y in zip(generated, declared)]
        evaluation.generation = measure.generation_metrics(texts, generated, labels, truncated)
        if labels is not None and target.kind == "base":
            evaluation.note = "zero-shot: answers constrained to the label set"
    _free(chat)
    evaluation.cost = _rounded(cost)
    return evaluation, texts


def evaluate_examples(candidate: refs.Target, baseline: refs.Target | None, examples: list[list[dict]], *,
                      data: str, declared_labels: list[str] | None = None, answers: Answers = "auto",
                      training_answers: list[str] | None = None, max_examples: int | None = 50,
                      max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, device: str = "auto",
                      losses: dict[str, LossMetrics] | None = None,
                      checkpoints: list[CheckpointLoss] | None = None) -> EvaluationReport:
    """Evaluate ``candidate`` (and ``baseline``) on ``examples``.

    ``declared_labels`` are per-example labels (a classification file's), which also declares the answers to
    be labels. ``training_answers`` (the final answers, or labels, of the training set) let ``answers="auto"``
    decide from the training set. Without precomputed ``losses`` (keys "candidate", "baseline") the loss is
    scored on the same sample that is generated for; with them, generation still covers at most
    ``max_examples``.
    """
    if not examples:
        raise InvalidDataError(f"{data}: no examples to evaluate")
    losses = losses or {}
    picked = sample_indices(len(examples), max_examples)
    generated = [examples[i] for i in picked]
    declared = [declared_labels[i] for i in picked] if declared_labels else None
    references = declared or [final_answer(m) for m in generated]
    kind, label_set, kind_from = answer_kind(candidate, examples, references, declared_labels=declared_labels,
                                             answers=answers, training_answers=training_answers)
    scored = generated if "candidate" not in losses else []  # loss on the sample unless it is given
    report = EvaluationReport(data=data, answer_kind=kind, answer_kind_from=kind_from,
                              n_examples=len(scored) or len(examples),
                              n_generated=len(generated), max_new_tokens=max_new_tokens,
                              candidate=ModelEvaluation(model=candidate.name, kind=candidate.kind),
                              checkpoints=checkpoints or [])
    if kind != "text":
        report.majority_label_accuracy = majority_accuracy(references)
    report.candidate, cand_answers = _measure(
        candidate, scored, generated, labels=label_set, declared=declared, max_new_tokens=max_new_tokens,
        device=device, loss=losses.get("candidate"), with_loss=True)
    base_answers = None
    if baseline is not None:
        report.baseline, base_answers = _measure(
            baseline, scored, generated, labels=label_set, declared=declared, max_new_tokens=max_new_tokens,
            device=device, loss=losses.get("baseline"), with_loss=baseline.task == candidate.task)
        report.verdict = decide(report.candidate, report.baseline)
    report.samples = [Sample(prompt=measure.last_user(m), reference=r, candidate=c,
                             baseline=base_answers[i] if base_answers else None)
                      for i, (m, r, c) in enumerate(zip(generated, references, cand_answers)) if i < N_SAMPLES]
    report.cost = report.candidate.cost + (report.baseline.cost if report.baseline else Cost())
    return report


def training_answers_of(path: str | Path, data_format: str | None = None, text_column: str | None = None,
                        label_column: str | None = None) -> list[str]:
    """The final assistant answers of a training file of any supported format (its labels for classification
    data): what label detection reads."""
    from tempering.data.formats import load_examples

    messages, labels, _ = load_examples(path, data_format, text_column, label_column)
    return labels or [final_answer(m) for m in messages if any(t["role"] == "assistant" for t in m)]


def evaluate_file(model: str, data: str | Path, *, compare: str | None = "base", max_examples: int | None = 100,
                  data_format: str | None = None, text_column: str | None = None, label_column: str | None = None,
                  answers: Answers = "auto", train_data: str | Path | None = None,
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, device: str = "auto",
                  allow_paths: bool = False) -> EvaluationReport:
    """Evaluate ``model`` (a base, fine-tuned or checkpoint name, see ``train.refs``; a checkpoint folder's path
    too with ``allow_paths``, the command line's convenience) on a data file of any
    supported format, against ``compare``: a model name, "base" (the candidate's base model; nothing for a
    base model) or None. ``train_data`` (any format, detected) is the training set whose answers decide
    whether answers are labels when ``answers`` is "auto"."""
    from tempering.data.formats import load_examples

    if max_new_tokens < 1:
        raise InvalidConfigError("max_new_tokens must be at least 1", param="max_new_tokens")
    candidate = refs.resolve(model, allow_paths=allow_paths)
    baseline = None
    if compare == "base":
        baseline = refs.resolve(candidate.base_model) if candidate.kind != "base" else None
    elif compare:
        baseline = refs.resolve(compare, allow_paths=allow_paths)
    if baseline is not None and baseline.task == "classification" and candidate.task != "classification":
        raise InvalidConfigError("a chat model cannot be compared against a classification model; swap them",
                                 param="compare")
    messages, labels, _ = load_examples(data, data_format, text_column, label_column)
    usable = [i for i, m in enumerate(messages) if any(t["role"] == "assistant" for t in m)]
    messages = [messages[i] for i in usable]
    labels = [labels[i] for i in usable] if labels else None
    training = training_answers_of(train_data, None, text_column, label_column) if train_data else None
    report = evaluate_examples(candidate, baseline, messages, data=str(data), declared_labels=labels,
                               answers=answers, training_answers=training, max_examples=max_examples,
                               max_new_tokens=max_new_tokens, device=device)
    report.selection = _selection_of(candidate)
    return report


def _selection_of(target):
    """A fine-tuned model's best-checkpoint selection, as its job recorded it (None for anything else)."""
    import json

    from tempering.evaluate.report import Selection
    from tempering.train.artifacts import METADATA

    if target.kind != "fine-tuned" or target.adapter is None or not (target.adapter / METADATA).is_file():
        return None
    recorded = json.loads((target.adapter / METADATA).read_text(encoding="utf-8")).get("selection")
    return Selection(**recorded) if recorded else None
