"""What a caller asks of generation, and what generation hands back: plain data, no torch, so the API's edge
can build and read them without loading a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

MAX_TOP_LOGPROBS = 20  # OpenAI's bound


class SamplingParams(BaseModel):
    max_tokens: int = Field(default=256, ge=1, description="Most tokens to generate.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 picks the likeliest token (greedy).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(default=None, description="Seed for sampling (temperature > 0).")
    logprobs: bool = Field(default=False, description="Return the log probability of each generated token.")
    top_logprobs: int = Field(default=0, ge=0, le=MAX_TOP_LOGPROBS,
                              description="Also return this many likeliest alternatives at each position.")
    response_format: dict[str, Any] | None = Field(
        default=None, description="Constrain the output (serve.constrain): {\"type\": \"json_object\"}, "
        "{\"type\": \"json_schema\", \"schema\": {...}} or {\"type\": \"choice\", \"choices\": [...]}; "
        "None: free text.")


@dataclass
class TopLogprob:
    token: str
    logprob: float
    token_id: int


@dataclass
class TokenLogprob:
    token: str  # the token's own text (a piece of a character for some byte-level tokens)
    logprob: float
    token_id: int
    top: list[TopLogprob] = field(default_factory=list)


@dataclass
class Chunk:
    """A piece of an answer. ``text`` may be empty while a multi-byte character is incomplete; the last
    chunk carries ``finish_reason`` ("stop": the model ended its turn, or an upstream said so; "length": the
    token budget ran out) and ``completion_tokens``, the number of tokens generated in all.
    ``tokens`` is how many generated tokens this chunk stands for (0 for a closing chunk after the end of
    turn), so a caller that stops early (a stop sequence) still counts what was generated."""

    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    completion_tokens: int | None = None
    tokens: int = 0
