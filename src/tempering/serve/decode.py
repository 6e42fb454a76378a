"""Decoding pieces shared by the serving engine and the plain decode loop of ``serve.local``: incremental
detokenization, a model's end-of-sequence ids, and picking the next token from logits. Knows nothing about
batching, adapters or HTTP.
"""

from __future__ import annotations

import torch

from tempering.serve.params import SamplingParams


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
