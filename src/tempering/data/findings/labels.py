"""Labels and balance: classes from a label column or from repeated short answers, their counts on each
side, imbalance, rare and unsplittable classes."""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field

from tempering.data.findings.finding import Finding
from tempering.data.findings.keys import final_answer, infer_labels
from tempering.data.formats import Example

MIN_PER_CLASS = 5  # fewer examples than this per class and a class is barely learned, let alone measured
IMBALANCE_WARNING = 10.0  # most common / rarest class


class LabelStats(BaseModel):
    source: Literal["column", "assistant_answers"]
    counts: dict[str, int] = Field(description="Examples per class, most common first.")
    n_classes: int
    imbalance_ratio: float = Field(description="Most common class count / rarest class count.")
    rare_classes: list[str] = Field(description=f"Classes with fewer than {MIN_PER_CLASS} examples.")
    unsplittable_classes: list[str] = Field(
        description="Classes with a single example: they cannot appear on both sides of a split."
    )
    validation_counts: dict[str, int] | None = None
    missing_from_validation: list[str] = Field(default_factory=list)
    unseen_in_training: list[str] = Field(default_factory=list)


def label_stats(train: list[Example], validation: list[Example] | None) -> LabelStats | None:
    if train and all(e.label is not None for e in train):
        source, labels = "column", [e.label for e in train]
    else:
        source, labels = "assistant_answers", infer_labels([e.messages for e in train])
    if not labels:
        return None
    counts = Counter(labels)
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    stats = LabelStats(
        source=source,
        counts=ordered,
        n_classes=len(counts),
        imbalance_ratio=round(max(counts.values()) / min(counts.values()), 2),
        rare_classes=[c for c, n in ordered.items() if n < MIN_PER_CLASS],
        unsplittable_classes=[c for c, n in ordered.items() if n < 2],
    )
    if validation:
        valid_labels = [
            e.label if e.label is not None else final_answer(e.messages).strip() for e in validation
        ]
        valid_counts = Counter(valid_labels)
        stats.validation_counts = dict(sorted(valid_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        stats.missing_from_validation = [c for c in ordered if c not in valid_counts]
        stats.unseen_in_training = sorted(c for c in valid_counts if c not in counts)
    return stats


def label_findings(stats: LabelStats | None, train: list[Example]) -> list[Finding]:
    if stats is None:
        return []
    labels = [e.label if e.label is not None else final_answer(e.messages).strip() for e in train]
    lines_of = lambda classes: [e.line for e, lab in zip(train, labels) if lab in classes]
    source = "label column" if stats.source == "column" else "repeated short answers"
    findings = [
        Finding(
            level="info",
            code="labels",
            message=(
                f"{stats.n_classes} classes (from the {source}"
                f"); most common {next(iter(stats.counts.items()))}, rarest {list(stats.counts.items())[-1]}"
            ),
        )
    ]
    if stats.imbalance_ratio >= IMBALANCE_WARNING:
        findings.append(
            Finding(
                level="warning",
                code="label_imbalance",
                message=(
                    f"imbalance ratio {stats.imbalance_ratio:g}:1 between the most common and the rarest "
                    "class"
                ),
            )
        )
    if stats.rare_classes:
        findings.append(
            Finding(
                level="warning",
                code="rare_classes",
                lines=lines_of(set(stats.rare_classes)),
                message=f"{len(stats.rare_classes)} class(es) have fewer than {MIN_PER_CLASS} "
                f"examples: {', '.join(stats.rare_classes[:10])}",
            )
        )
    if stats.unsplittable_classes:
        findings.append(
            Finding(
                level="warning",
                code="unsplittable_classes",
                lines=lines_of(set(stats.unsplittable_classes)),
                message=f"{len(stats.unsplittable_classes)} class(es) have a single example, so a split "
                "cannot put "
                "them on both sides",
            )
        )
    if stats.missing_from_validation:
        findings.append(
            Finding(
                level="warning",
                code="classes_missing_from_validation",
                message=(
                    f"{len(stats.missing_from_validation)} training class(es) never appear in validation: "
                    f"{', '.join(stats.missing_from_validation[:10])}"
                ),
            )
        )
    if stats.unseen_in_training:
        findings.append(
            Finding(
                level="warning",
                code="classes_unseen_in_training",
                message=(
                    f"validation has {len(stats.unseen_in_training)} class(es) training never shows: "
                    f"{', '.join(stats.unseen_in_training[:10])}"
                ),
            )
        )
    return findings
