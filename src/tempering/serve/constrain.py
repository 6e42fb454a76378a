"""Structured outputs: decoding constrained to a grammar, per row of a batch, with llguidance.

A request's ``response_format`` (``SamplingParams.response_format``) becomes a grammar: ``json_object`` any JSON
object, ``json_schema`` the caller's schema (OpenAI's strict mode: no whitespace between tokens, properties in
the schema's order), ``choice`` exactly one of a list of strings (the evaluation's label answers). At every
step the row's matcher computes which tokens keep the output inside the grammar; every other token's logit is
set to -inf before the row's token is picked (greedy or sampled), and the end of turn is allowed only once the
output is complete. Rows without a constraint in the same batch are untouched. llguidance computes a mask in
tens of microseconds once its token trie is built (about a second per tokenizer, once per engine).
"""

from __future__ import annotations

import json
import os
import re
import threading
from functools import lru_cache

# llguidance computes masks on a rayon thread pool; on a busy CPU its workers wait for cores (a mask then took
# 25 ms instead of 0.05 ms here). One row's mask needs one thread. Read when the pool first starts.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
WARM_UP = '{"name": "a few words of text", "count": 12, "items": [true, null, 3.5]}'

from tempering.errors import InvalidConfigError

PARAM = "response_format"
MAX_CHOICES = 10_000


def grammar_of(spec: dict) -> str:
    """The llguidance grammar of a ``response_format`` spec (see the module's docstring)."""
    import llguidance

    kind = spec.get("type")
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"},
                                                             defaults={"whitespace_flexible": False})
    if kind == "json_schema":
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise InvalidConfigError("response_format.json_schema.schema must be a JSON schema object",
                                     param="response_format.json_schema.schema")
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    if kind == "choice":
        choices = spec.get("choices") or []
        if not choices or len(choices) > MAX_CHOICES or not all(isinstance(c, str) and c for c in choices):
            raise InvalidConfigError(f"a choice constraint needs 1-{MAX_CHOICES} non-empty strings", param=PARAM)
        return llguidance.LLMatcher.grammar_from_regex("(?:" + "|".join(re.escape(c) for c in choices) + ")")
    raise InvalidConfigError(f"unknown response_format type {kind!r}", param=f"{PARAM}.type")


def check(spec: dict) -> str:
    """The grammar of a spec, validated: ``InvalidConfigError`` naming ``response_format`` when the schema uses
    what the engine cannot enforce (the request is refused before it is queued). Compiled once per spec (the
    last few hundred are kept), for the API's check and the engine alike. Imports no torch."""
    return _compiled(json.dumps(spec, sort_keys=True))


@lru_cache(maxsize=256)
def _compiled(key: str) -> str:
    import llguidance

    grammar = grammar_of(json.loads(key))
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise InvalidConfigError(f"response_format: {error}", param=PARAM)
    return grammar


class Constrainer:
    """An engine's constrained decoding: the tokenizer's llguidance form, built on first use."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int]):
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, sorted(eos_ids)
        self._ll = None
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, tokenizer, model, eos_ids: set[int]) -> Constrainer:
        """The constrainer of a loaded causal LM: its vocabulary is the output embedding's rows (which may pass
        the tokenizer's length, as Phi-3's 32,064 rows for 32,011 tokens)."""
        return cls(tokenizer, model.get_output_embeddings().weight.shape[0], eos_ids)

    def _llguidance_tokenizer(self):
        with self._lock:
            if self._ll is None:
                import llguidance.hf

                self._ll = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size,
                                                        eos_token=self.eos_ids)
                self._warm_up(self._ll)
            return self._ll

    def _warm_up(self, ll) -> None:
        """Walk a JSON object once: llguidance builds its lexer's token tables on the first masks (a few
        hundred ms), which would otherwise land on the first request's first tokens."""
        import llguidance

        matcher = Matcher(llguidance.LLMatcher(ll, check({"type": "json_object"}), log_level=0), self.vocab_size)
        for token in self.tokenizer(WARM_UP, add_special_tokens=False)["input_ids"]:
            matcher.fill()
            if not matcher.inner.consume_token(token):
                break

    def matcher(self, spec: dict) -> Matcher:
        import llguidance

        inner = llguidance.LLMatcher(self._llguidance_tokenizer(), check(spec), log_level=0)
        if inner.is_error():
            raise InvalidConfigError(f"response_format: {inner.get_error()}", param=PARAM)
        return Matcher(inner, self.vocab_size)


class Matcher:
    """One row's position in its grammar."""

    def __init__(self, inner, vocab_size: int):
        import llguidance.numpy as ln  # not llguidance.torch: it compiles a kernel (torch.compile) to apply masks

        self.inner, self._ln, self.vocab_size = inner, ln, vocab_size
        self.bitmask = ln.allocate_token_bitmask(1, vocab_size)

    def fill(self) -> None:
        self._ln.fill_next_token_bitmask(self.inner, self.bitmask, 0)

    def mask(self, logits):
        """The row's logits with every token outside the grammar at -inf (a float32 copy on the CPU)."""
        import numpy as np
        import torch

        self.fill()
        allowed = np.unpackbits(self.bitmask[0].view(np.uint8), bitorder="little")[:logits.shape[-1]]
        masked = logits.detach().float().cpu().clone()
        masked[torch.from_numpy(allowed == 0)] = float("-inf")
        return masked

    def advance(self, token: int) -> None:
        if not self.inner.consume_token(token):
            raise InvalidConfigError(f"response_format: the output left the grammar ({self.inner.get_error()})",
                                     param=PARAM)

    @property
    def finished(self) -> bool:
        """The output is complete and nothing may follow (the row ends as if the model had ended its turn)."""
        return self.inner.is_stopped()
