"""A KV cache that appends in place: the serving engine's ``DynamicCache`` with room to grow.

transformers' ``DynamicLayer`` appends each step's keys and values with ``torch.cat``, which copies the whole
cache of every layer at every decoded token: O(context) bytes a step, 2 x 30 layers of it on the embedded model
(the largest single cost after the weight products once a conversation is a few hundred tokens long). Here each
layer's keys and values live in a buffer with spare columns; a step writes its new column into the spare room and
hands attention a view of the filled part. When the room runs out the buffer is reallocated with a quarter more
(amortised O(1) a token; memory at most 1.25x the cache plus 64 columns).

``keys`` and ``values`` stay assignable tensors, as the engine's batch surgery (joining newcomers, dropping
finished rows, trimming columns: ``serve.engine``, ``serve.decode.keep_rows``) needs: assigning one copies it into
a fresh buffer with room. Full-length layers only, like ``DynamicCache()`` without a config (the engine applies a
sliding window through the attention mask). Knows nothing about adapters or HTTP.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_ROOM = 64  # spare columns at least, so short answers never reallocate


def _room(filled: int) -> int:
    return filled + max(MIN_ROOM, filled // 4)


def _buffered(name: str) -> property:
    """``keys`` / ``values``: a view of the filled columns of the layer's buffer; assigning copies into a new one."""

    def get(layer: GrowingLayer) -> torch.Tensor | None:
        buffer = layer._buffers[name]
        return None if buffer is None else buffer[..., : layer._filled[name], :]

    def put(layer: GrowingLayer, value: torch.Tensor | None) -> None:
        if value is None or value.dim() != 4:  # reset, or transformers' empty placeholder
            layer._buffers[name], layer._filled[name] = None, 0
            return
        filled = value.shape[-2]
        buffer = value.new_empty((*value.shape[:-2], _room(filled), value.shape[-1]))
        buffer[..., :filled, :].copy_(value)
        layer._buffers[name], layer._filled[name] = buffer, filled

    return property(get, put)


class GrowingLayer(DynamicLayer):
    """A full-length cache layer (``[batch, kv_heads, columns, head_dim]``) appended in place."""

    keys = _buffered("keys")
    values = _buffered("values")

    def __init__(self):
        self._buffers: dict[str, torch.Tensor | None] = {"keys": None, "values": None}
        self._filled = {"keys": 0, "values": 0}
        super().__init__()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def _append(self, name: str, states: torch.Tensor) -> torch.Tensor:
        buffer, filled, new = self._buffers[name], self._filled[name], states.shape[-2]
        if buffer is None or filled == 0:
            setattr(self, name, states)
            return getattr(self, name)
        if buffer.shape[:-2] != states.shape[:-2]:
            raise ValueError(f"cache rows/heads {tuple(buffer.shape[:-2])} cannot take states of "
                             f"{tuple(states.shape[:-2])}")
        if filled + new > buffer.shape[-2]:
            grown = buffer.new_empty((*buffer.shape[:-2], _room(filled + new), buffer.shape[-1]))
            grown[..., :filled, :].copy_(buffer[..., :filled, :])
            buffer = self._buffers[name] = grown
        buffer[..., filled : filled + new, :].copy_(states)
        self._filled[name] = filled + new
        return buffer[..., : filled + new, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return self._append("keys", key_states), self._append("values", value_states)

    def capacity(self) -> int:
        """Columns the layer holds room for (0 when empty)."""
        buffer = self._buffers["keys"]
        return 0 if buffer is None else buffer.shape[-2]


class GrowingCache(DynamicCache):
    """``DynamicCache()`` (full-length layers, created as the model asks for them) of ``GrowingLayer``."""

    def __init__(self):
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer
