"""Batches of encoded examples with little padding: seeded, length-grouped, deterministic per epoch.

Examples are shuffled, cut into "mega-batches" of ``batch_size * 16`` examples, each mega-batch sorted by
length and sliced into batches, and the batch order shuffled again: batches are near-uniform in length
(little padding to compute) while every epoch still sees a fresh order. The same (seed, epoch) always
gives the same batches, which is what exact resume relies on.
"""

from __future__ import annotations

import random

import torch

from tempering.data.encode import IGNORE_INDEX, EncodedExample

MEGABATCH_FACTOR = 16


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of the examples in each batch of ``epoch``."""
    rng = random.Random(seed * 1_000_003 + epoch)  # noqa: S311 - a seeded, reproducible order, not a secret
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * MEGABATCH_FACTOR
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        mega = sorted(order[start : start + span], key=lambda i: lengths[i], reverse=True)
        batches += [mega[i : i + batch_size] for i in range(0, len(mega), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[EncodedExample], pad_id: int, max_length: int | None = None) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors (truncated to max_length)."""
    rows = [(e.input_ids[:max_length], e.labels[:max_length]) for e in examples]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
