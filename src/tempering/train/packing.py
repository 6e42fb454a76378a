"""Padding-free batches with their shared prefix in the same pass: one packed sequence per batch.

``loss`` runs a batch whose rows share a prompt prefix (``batch["prefix_length"]`` P) as two passes through the
decoder: the prefix alone (one row of P tokens), then every row's remainder, right-padded to the widest. On a
CPU the first pass's matrix products have P rows (36 for BANKING77's instruction) and run at about 60 % of the
rate of the second's, every layer's small operations are paid twice, and the padding is computed like text.

Packed, the decoder runs once over ``prefix + row 1's remainder + row 2's remainder + …`` (one sequence, no
padding, each row's positions numbered from P as in its own sequence, and each row cut before its last token,
whose state predicts nothing). Every projection, norm and MLP then works on all the batch's tokens at once.
Only attention needs the rows apart: ``attention`` (the module this one serves) gathers each row's queries,
keys and values into a padded ``[rows, heads, width, dim]`` block, puts the prefix's keys and values in front
of every row's (a broadcast view: autograd sums the rows' gradients into the prefix, as in ``loss``), and runs
SDPA with a mask that lets each row see the prefix and its own earlier tokens; the prefix attends causally to
itself. The result, the loss and every gradient equal the padded computation's (tested to 1e-5, Llama and
Phi-3); with LoRA dropout > 0 a row's tokens draw their masks in a different order, as in any change of batch
shape. Used when the model attends through ``attention.ATTENTION`` (the CPU training path), is one of
``PACKABLE``'s architectures and every row fits its sliding window, if it has one (``usable``); otherwise
``loss`` keeps the two passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PackedRows:
    """Where each row of a batch lies in its packed sequence (built by ``pack``)."""

    prefix: int  # P: leading positions of the packed sequence that every row shares
    index: torch.Tensor  # [rows, width] long: packed position of each row's j-th own token (padding: 0)
    flat: torch.Tensor  # [tokens after the prefix] long: where each packed token sits in [rows * width]
    mask: torch.Tensor  # [rows, 1, width, P + width] bool: the keys each of a row's queries may see


# Decoders whose every layer is per-token work plus attention through transformers' attention interface:
# packing is exact for them. Hybrids with convolution or state-space layers (LFM2, Jamba, …) would carry one
# row's state into the next packed row, so the list is explicit (the catalog's architectures).
PACKABLE = frozenset({"llama", "phi3"})


def usable(lm, batch: dict) -> bool:
    """Whether ``lm`` (a causal LM or classifier, no adapter wrapper) can run ``batch`` packed: an architecture
    of ``PACKABLE`` on the CPU training path, every row inside its sliding window if it has one."""
    from tempering.train.attention import ATTENTION

    config = lm.config
    if (getattr(config, "_attn_implementation", None) != ATTENTION or config.model_type not in PACKABLE
            or next(lm.parameters()).device.type != "cpu"):
        return False
    window = getattr(config, "sliding_window", None)
    return window is None or batch["input_ids"].shape[1] <= window


def pack(batch: dict, device, keep_last: bool = False):
    """The batch as one sequence: ``(input_ids [1, L], position_ids [1, L], own, rows)``; ``own`` lists
    ``(row, tokens)`` in packed order. Each row keeps its tokens after the prefix up to, not including, its
    last, whose state predicts nothing (``keep_last``: including it, the token a classifier's head reads);
    a row left with none is dropped."""
    input_ids = batch["input_ids"]
    prefix = int(batch.get("prefix_length", 0))
    cut = 0 if keep_last else 1
    own = [(r, n - cut - prefix) for r, n in enumerate(batch["attention_mask"].sum(dim=1).tolist())
           if n - cut - prefix > 0]
    ids = [input_ids[0, :prefix]] + [input_ids[r, prefix : prefix + n] for r, n in own]
    counts = torch.tensor([n for _, n in own])
    positions = torch.cat([torch.arange(prefix)] + [torch.arange(prefix, prefix + n) for _, n in own])

    width = int(counts.max())
    column = torch.arange(width)
    valid = column[None] < counts[:, None]  # [rows, width]
    starts = prefix + torch.cumsum(counts, 0) - counts
    index = torch.where(valid, starts[:, None] + column[None], 0)
    flat = valid.reshape(-1).nonzero().squeeze(1)
    own_keys = (column[None, :] <= column[:, None])[None] & valid[:, None, :]  # [rows, query, key]
    mask = torch.cat([torch.ones(len(own), width, prefix, dtype=torch.bool), own_keys], dim=2)[:, None]
    rows = PackedRows(prefix=prefix, index=index.to(device), flat=flat.to(device), mask=mask.to(device))
    return torch.cat(ids)[None].to(device), positions[None].to(device), own, rows


def attend(module, query, key, value, rows: PackedRows, scaling=None, dropout: float = 0.0, **kwargs) -> torch.Tensor:
    """Attention over a packed sequence (``query`` [1, heads, L, dim], ``key``/``value`` [1, kv heads, L,
    dim]): ``[1, L, heads, dim]``, as transformers' attention functions return it."""
    if any(kwargs.get(name) is not None for name in ("softcap", "s_aux", "position_bias")):
        raise NotImplementedError("packed attention has no soft cap, attention sinks or position bias")
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    prefix, (count, width) = rows.prefix, rows.index.shape

    def own(t):  # [1, heads, L, dim] -> [rows, heads, width, dim]
        # rows of a [L, heads, dim] view (the projections' own layout): whole rows copied, and a backward that
        # adds rows back (index_select's), no sort
        by_token = t[0].transpose(0, 1).index_select(0, rows.index.reshape(-1))
        return by_token.view(count, width, t.shape[1], t.shape[3]).transpose(1, 2)

    keys, values = own(key), own(value)
    if prefix:
        keys = torch.cat([key[:, :, :prefix].expand(count, -1, -1, -1), keys], dim=2)
        values = torch.cat([value[:, :, :prefix].expand(count, -1, -1, -1), values], dim=2)
    out = F.scaled_dot_product_attention(own(query), keys, values, attn_mask=rows.mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=gqa)
    heads, dim = out.shape[1], out.shape[3]
    parts = [out.transpose(1, 2).reshape(count * width, heads, dim).index_select(0, rows.flat)]
    if prefix:
        head = F.scaled_dot_product_attention(query[:, :, :prefix], key[:, :, :prefix], value[:, :, :prefix],
                                              dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
        parts.insert(0, head[0].transpose(0, 1))
    return torch.cat(parts)[None]


def packed_hidden(backbone, batch: dict, device, keep_last: bool = False):
    """The decoder's last hidden states after the prefix ``[L - P, hidden]``, in packed order, and ``own``
    (see ``pack``)."""
    input_ids, position_ids, own, rows = pack(batch, device, keep_last)
    # the 4-D mask goes through transformers' mask preparation untouched; ``attend`` uses it with ``rows``
    hidden = backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=rows.mask, use_cache=False,
                      packing=rows).last_hidden_state
    return hidden[0, rows.prefix :], own


def next_tokens(batch: dict, own: list[tuple[int, int]]) -> torch.Tensor:
    """The label of the token after each packed position past the prefix (``packed_hidden``'s rows)."""
    prefix = int(batch.get("prefix_length", 0))
    return torch.cat([batch["labels"][r, prefix + 1 : prefix + 1 + n] for r, n in own])
