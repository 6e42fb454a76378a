"""LongRoPE (Phi-3-mini-128k, Phi-3.5-mini) at serving time: what each request would get alone.

A LongRoPE model rotates positions with ``short_factor`` while the sequence fits in
``original_max_position_embeddings`` (4096) and with ``long_factor`` beyond. transformers picks the set once per
forward pass from the largest position in it, and its ``generate`` recomputes the whole KV cache when a sequence
first grows past the limit (the cached keys were rotated with the short factors). Two consequences for serving:

- in a batch, one long conversation would switch every other row to the long factors: ``per_row`` makes each
  row pick its own set from its own positions (the engine always passes per-row ``position_ids``);
- a sequence that crosses the limit while decoding must be prefilled again, as ``generate`` does:
  ``switch_length`` says at which length (None when the model has no LongRoPE).

Knows nothing about adapters, batching or HTTP.
"""

from __future__ import annotations

import torch


def _longrope_modules(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if getattr(m, "rope_type", None) == "longrope"
            and hasattr(m, "original_inv_freq")]


def switch_length(model) -> int | None:
    """The sequence length (``original_max_position_embeddings``) past which LongRoPE switches to its long
    factors; None for a model without LongRoPE."""
    if not _longrope_modules(model):
        return None
    params = getattr(model.config, "rope_parameters", None) or {}
    return int(params.get("original_max_position_embeddings")
               or model.config.original_max_position_embeddings)


def per_row(model) -> None:
    """Make every LongRoPE rotary embedding of ``model`` choose short or long factors row by row (in place)."""
    for rotary in _longrope_modules(model):
        if getattr(rotary, "_tempering_per_row", False):
            continue
        whole_batch = rotary.forward  # transformers' forward: one factor set from the batch's largest position

        def forward(x, position_ids, _whole_batch=whole_batch):
            if position_ids.shape[0] == 1:
                return _whole_batch(x, position_ids)
            rows = [_whole_batch(x[i : i + 1], position_ids[i : i + 1]) for i in range(position_ids.shape[0])]
            return torch.cat([cos for cos, _ in rows]), torch.cat([sin for _, sin in rows])

        rotary.forward = forward
        rotary._tempering_per_row = True
