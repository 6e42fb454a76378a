"""Text metrics on (answer, reference) strings: exact match, labels, ROUGE-L, answer length.

Owns how answers are compared: normalisation (``data.findings.normalize``: case, punctuation, whitespace),
when answers count as labels, and mapping a generated answer onto a label. The numbers come from maintained
implementations (scikit-learn for accuracy and F1, Google's ``rouge-score`` for ROUGE-L). Knows nothing about
models or torch.
"""

from __future__ import annotations

from collections import Counter

from tempering.data.findings import (
    MIN_EXAMPLES_TO_DETECT_LABELS,
    infer_labels,
    normalize,
    training_label_set,
)
from tempering.evaluate.report import LabelMetrics, TextMetrics

OTHER = "(other)"  # the prediction of an answer that matches no label
MIN_REFERENCES_IN_LABELS = 0.9  # a few validation labels never seen in training still make a label task


def final_answer(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "").strip()


def detect_labels(examples: list[list[dict]]) -> list[str] | None:
    """The label set when the final assistant answers look like labels (short, one line, drawn from a small
    repeated set: ``data.findings.infer_labels``) over at least ``MIN_EXAMPLES_TO_DETECT_LABELS`` examples."""
    if len(examples) < MIN_EXAMPLES_TO_DETECT_LABELS:
        return None
    answers = infer_labels(examples)
    return sorted(set(answers)) if answers else None


def training_labels(training_answers: list[str], references: list[str]) -> list[str] | None:
    """The label set when the training answers form a closed set (``data.findings.training_label_set``: the
    rule the "auto" epochs use too) that the evaluated references fall in: at least 90 % of them among it
    (after normalisation). None otherwise."""
    distinct = training_label_set(training_answers)
    if distinct is None or not references:
        return None
    keys = {normalize(a) for a in distinct}
    inside = sum(normalize(r) in keys for r in references)
    return distinct if inside >= MIN_REFERENCES_IN_LABELS * len(references) else None


def exact_match(answers: list[str], references: list[str]) -> float:
    if not answers:
        return 0.0
    return sum(normalize(a) == normalize(r) for a, r in zip(answers, references)) / len(answers)


def to_label(answer: str, labels: list[str]) -> str:
    """The label an answer names: equal after normalisation, else the only label its first line starts
    with, else ``OTHER``."""
    by_key = {normalize(label): label for label in labels}
    key = normalize(answer.strip().splitlines()[0] if answer.strip() else "")
    if key in by_key:
        return by_key[key]
    starts = [label for k, label in by_key.items() if k and key.startswith(k + " ")]
    return max(starts, key=len) if starts else OTHER


def label_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> LabelMetrics:
    """Accuracy, macro-F1 over ``labels`` and per-label F1 (scikit-learn), and the commonest confusions."""
    from sklearn.metrics import accuracy_score, f1_score

    per_label = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    confusions = Counter((t, p) for t, p in zip(y_true, y_pred) if t != p)
    return LabelMetrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        per_label_f1={label: float(f) for label, f in zip(labels, per_label)},
        top_confusions=[{"true": t, "predicted": p, "count": n} for (t, p), n in confusions.most_common(5)],
        outside_labels=sum(p == OTHER for p in y_pred),
        n=len(y_true),
    )


def majority_accuracy(y_true: list[str]) -> float | None:
    return Counter(y_true).most_common(1)[0][1] / len(y_true) if y_true else None


def text_metrics(answers: list[str], references: list[str]) -> TextMetrics:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    n = max(len(answers), 1)
    rouge = sum(scorer.score(r, a)["rougeL"].fmeasure for a, r in zip(answers, references)) / n
    answer_words = sum(len(a.split()) for a in answers) / n
    reference_words = sum(len(r.split()) for r in references) / n
    return TextMetrics(rouge_l=rouge, answer_words=answer_words, reference_words=reference_words,
                       length_ratio=answer_words / reference_words if reference_words else None)
