"""Batches of encoded examples with little padding and shared prefixes: seeded, grouped, deterministic per epoch.

Examples are shuffled, cut into "mega-batches" of ``batch_size * 16`` examples, each mega-batch sorted (by
shared prompt prefix, then by length) and sliced into batches, and the batch order shuffled again: batches are
near-uniform in length (little padding to compute) and their rows tend to share a prompt prefix (computed
once, see ``loss``), while every epoch still sees a fresh order. The same (seed, epoch) always gives the same
batches, which is what exact resume relies on.

The shareable prefix of a batch is the token-level common prefix of its rows, cut before the first position
whose next token carries loss (the LM head never runs inside it) and before each row's last token (every row
keeps a suffix); below ``MIN_SHARED_PREFIX`` tokens it is not worth a separate forward pass and is not shared.
"""

from __future__ import annotations

import itertools
import random

import torch

from tempering.data.encode import IGNORE_INDEX, EncodedExample

MEGABATCH_FACTOR = 16
# Sharing costs one extra (small) forward and backward call; a template header of 3–5 tokens does not pay for it.
MIN_SHARED_PREFIX = 8


def shareable_length(example: EncodedExample, max_length: int | None = None) -> int:
    """How many leading tokens of ``example`` may be shared: none of them (nor the one after) carries loss."""
    labels = example.labels[:max_length]
    first = next((j for j, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return max(0, min(first - 1, len(labels) - 1))


def shared_prefix_length(examples: list[EncodedExample], max_length: int | None = None) -> int:
    """Tokens the rows of one batch share and may compute once (0 when fewer than ``MIN_SHARED_PREFIX``)."""
    if len(examples) < 2:
        return 0
    return common_prefix_length([e.input_ids for e in examples], min(shareable_length(e, max_length) for e in examples))


def common_prefix_length(rows: list, limit: int) -> int:
    """Leading tokens all ``rows`` share, at most ``limit`` (0 when fewer than ``MIN_SHARED_PREFIX``, or one row)."""
    if len(rows) < 2:
        return 0
    first = rows[0]
    n = 0
    while n < limit and all(row[n] == first[n] for row in rows[1:]):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def _common(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _prefix_groups(indices: list[int], prompts: list) -> dict[int, int]:
    """Group id per index: runs of the lexicographically sorted prompts sharing ≥ MIN_SHARED_PREFIX tokens
    (the common prefix of a sorted run is the minimum of its neighbours'); rows sharing nothing are group -1."""
    ordered = sorted(indices, key=lambda i: prompts[i])
    groups: dict[int, int] = {}
    run = [ordered[0]] if ordered else []
    for prev, cur in itertools.pairwise(ordered):
        if _common(prompts[prev], prompts[cur]) >= MIN_SHARED_PREFIX:
            run.append(cur)
            continue
        groups.update({i: (min(run) if len(run) > 1 else -1) for i in run})
        run = [cur]
    groups.update({i: (min(run) if len(run) > 1 else -1) for i in run})
    return groups


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  prompts: list | None = None) -> list[list[int]]:
    """Indices of the examples in each batch of ``epoch``. ``prompts`` (each example's shareable leading
    token ids, a tuple) groups rows that share a prefix into the same batches; without it, length only."""
    rng = random.Random(seed * 1_000_003 + epoch)  # noqa: S311 - a seeded, reproducible order, not a secret
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * MEGABATCH_FACTOR
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        if prompts is None:
            mega = sorted(chunk, key=lambda i: lengths[i], reverse=True)
        else:
            group = _prefix_groups(chunk, prompts)
            # a pure function of the chunk: groups by their smallest index (-1, sharing nothing, first), then length
            mega = sorted(chunk, key=lambda i: (group[i], -lengths[i]))
        batches += [mega[i : i + batch_size] for i in range(0, len(mega), batch_size)]
    rng.shuffle(batches)
    return batches


def trained_end(labels: list[int]) -> int:
    """Length of the part of a row that counts: up to its last trained token. A causal model's later positions
    change nothing before them, and they predict no trained token (the template's closing tokens, a final
    newline), so they are never computed; a row training nothing keeps its length."""
    last = next((j for j in range(len(labels) - 1, -1, -1) if labels[j] != IGNORE_INDEX), None)
    return len(labels) if last is None else last + 1


def collate(examples: list[EncodedExample], pad_id: int, max_length: int | None = None,
            share_prefix: bool = True) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors (truncated to max_length, each row
    cut after its last trained token: ``trained_end``), and ``prefix_length``: how many leading tokens every
    row shares (see ``shared_prefix_length``; 0 = none)."""
    rows = []
    for e in examples:
        labels = e.labels[:max_length]
        end = trained_end(labels)
        rows.append((e.input_ids[:end], labels[:end]))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    prefix = shared_prefix_length(examples, max_length) if share_prefix else 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "prefix_length": prefix}
