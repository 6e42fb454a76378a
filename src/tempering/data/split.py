"""Deterministic, seeded train/validation split of converted examples.

Owns the split rules: examples that share a prompt (system and user turns after normalization, so exact
and near duplicates too) always land on the same side, because the same question on both sides leaks the
answer into validation; with labels the split is stratified, and every class that can keep at least one
training example gets at least one validation example. The same examples, labels, fraction and seed give
the same split on any machine. Knows nothing about files, tokenizers or training.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, Field

from tempering.data.findings import prompt_key
from tempering.errors import InvalidConfigError

T = TypeVar("T")


class ClassSplit(BaseModel):
    train: int
    validation: int


class SplitResult(BaseModel):
    """Which example went where, by index into the list that was split (both lists ascending)."""

    train_indices: list[int]
    validation_indices: list[int]
    validation_fraction: float
    seed: int
    stratified: bool = Field(description="Whether classes were split one by one.")
    by_label: dict[str, ClassSplit] | None = Field(default=None, description="Examples per class and side.")
    duplicate_groups: int = Field(description="Groups of examples sharing a prompt, each kept on one side.")
    notes: list[str] = Field(default_factory=list, description="Classes that could not be split, and why.")

    def apply(self, items: Sequence[T]) -> tuple[list[T], list[T]]:
        """(training items, validation items) of any list aligned with the one that was split."""
        return [items[i] for i in self.train_indices], [items[i] for i in self.validation_indices]


def _groups(examples: Sequence[list[dict]]) -> list[list[int]]:
    """Indices grouped by prompt, groups in order of first appearance."""
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for index, messages in enumerate(examples):
        by_key[prompt_key(messages)].append(index)
    return list(by_key.values())


def _pick(groups: list[list[int]], target: int, rng: random.Random) -> list[list[int]]:
    """Groups for validation: about ``target`` examples, at least one group when ``target`` > 0, and never
    every group (one stays for training). Groups that would overshoot the target are passed over."""
    if target <= 0 or len(groups) < 2:
        return []
    order = groups[:]
    rng.shuffle(order)
    chosen, count = [], 0
    for group in order:
        if len(chosen) == len(order) - 1 or count >= target:
            break
        if count + len(group) <= target:
            chosen.append(group)
            count += len(group)
    if not chosen:  # every group is bigger than the target: take the smallest one
        chosen.append(min(order, key=len))
    return chosen


def split_examples(
    examples: Sequence[list[dict]], labels: Sequence[str] | None, validation_fraction: float, seed: int
) -> SplitResult:
    """Split chat examples (message lists) into training and validation.

    ``labels`` (one per example, or None) stratifies the split: each class is split on its own with the
    same fraction, at least one validation example per class that has two or more distinct prompts. A
    group of examples sharing a prompt goes with the class most of its examples carry.
    """
    if not 0 < validation_fraction < 1:
        raise InvalidConfigError(
            f"validation_fraction must be between 0 and 1, got {validation_fraction}",
            param="validation_fraction",
        )
    if labels is not None and len(labels) != len(examples):
        raise InvalidConfigError(f"{len(labels)} labels for {len(examples)} examples", param="labels")
    groups = _groups(examples)
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for group in groups:
        label = Counter(labels[i] for i in group).most_common(1)[0][0] if labels is not None else ""
        by_class[label].append(group)
    rng = random.Random(seed)  # noqa: S311 - a seeded, reproducible split, not a secret
    validation: list[int] = []
    notes = []
    for label in sorted(by_class):
        class_groups = by_class[label]
        n = sum(len(g) for g in class_groups)
        target = max(1, round(validation_fraction * n)) if len(class_groups) >= 2 else 0
        picked = _pick(class_groups, target, rng)
        validation += [i for g in picked for i in g]
        if labels is not None and not picked:
            why = "a single example" if n == 1 else f"{n} examples that share one prompt"
            notes.append(f"class {label!r} has {why}: kept in training only")
    validation.sort()
    held = set(validation)
    train = [i for i in range(len(examples)) if i not in held]
    by_label = None
    if labels is not None:
        counts = {
            side: Counter(labels[i] for i in idx)
            for side, idx in (("train", train), ("validation", validation))
        }
        by_label = {
            c: ClassSplit(train=counts["train"][c], validation=counts["validation"][c])
            for c in sorted(set(labels))
        }
    return SplitResult(
        train_indices=train,
        validation_indices=validation,
        validation_fraction=validation_fraction,
        seed=seed,
        stratified=labels is not None,
        by_label=by_label,
        duplicate_groups=sum(len(g) > 1 for g in groups),
        notes=notes,
    )
