"""Decoding pieces shared by the serving engines (``serve.engine``, ``serve.llamacpp``) and the plain decode loop
of ``serve.local``: incremental detokenization, a model's end-of-sequence ids, picking the next token from
logits, the hand-off of chunks from a decoding thread to the caller's event loop, and dropping finished rows from
a left-padded batch's KV cache. Knows nothing about adapters or HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import torch

from tempering.serve.params import Chunk, SamplingParams


class Handoff:
    """Chunks from a decoding thread to the caller's event loop, in order. Made on the caller's loop;
    ``deliver`` (thread-safe) takes a ``Chunk`` or an exception, ``stream`` yields the chunks up to the one with
    a finish reason and raises a delivered exception."""

    def __init__(self):
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()

    def deliver(self, item: Chunk | BaseException) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def stream(self, on_close: Callable[[], None]) -> AsyncIterator[Chunk]:
        """The chunks; ``on_close`` runs however the stream ends (the answer ended, it failed, or the caller
        stopped reading), so the decoding side can let the sequence go."""
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            on_close()


class Detokenizer:
    """Incremental detokenization: each new token's text, held back while a multi-byte character is
    incomplete. Decodes a short window (not the whole answer) per token, the way vLLM and TGI do."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window decoded for context
        self.read = 0  # end of what has been emitted

    def add(self, token: int) -> str:
        self.ids.append(token)
        prefix_text = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        text = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end), as the tokenizer renders it."""
        if self.read == len(self.ids):
            return ""
        prefix_text = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        return self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=True)[len(prefix_text):]


def eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def pick_token(logits: torch.Tensor, params: SamplingParams, generator) -> int:
    if params.temperature == 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def keep_rows(cache, mask: torch.Tensor, keep: list[int], rows: int) -> torch.Tensor:
    """Keep the rows ``keep`` of a batch's KV cache (in place) and mask, then drop the leading columns no kept
    row needs (they held only the dropped rows' longer prompts); returns the new mask."""
    if len(keep) < rows:
        index = torch.tensor(keep, device=mask.device)
        mask = mask.index_select(0, index)
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    if start:
        mask = mask[:, start:]
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]
    return mask


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of prompts right-aligned (left-padded with ``pad_id``) and its attention mask, on ``device``."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.tensor(prompt)
        mask[i, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)
