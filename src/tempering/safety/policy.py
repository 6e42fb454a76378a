"""What a deployment asks of the filter: per category and direction a threshold, the project blocklists
to apply, and what a classifier failure means. Pure pydantic (wire-friendly), no torch, no classifiers.

Thresholds follow Azure: ``low`` blocks low, medium and high severity (strictest), ``medium`` blocks medium
and high (the default), ``high`` blocks high only, ``off`` annotates without blocking. Detection categories
(jailbreak, indirect_attack, profanity, custom ones) have no severity: any threshold but ``off`` blocks
what is detected.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Severity = Literal["safe", "low", "medium", "high"]
Threshold = Literal["off", "low", "medium", "high"]
HARM = ("hate", "sexual", "violence", "self_harm")
PROMPT_ATTACKS = ("jailbreak", "indirect_attack")
PROFANITY = "profanity"
BUILTIN = HARM + PROMPT_ATTACKS + (PROFANITY,)
# Calibrated probability → severity: the lower edge of each band. One probability scale for every head
# (each head is calibrated on its validation split), so the bands mean the same everywhere.
BANDS = (("high", 0.8), ("medium", 0.5), ("low", 0.25))
# A detection category counts as detected at this calibrated probability.
DETECTED_AT = 0.5
_RANK = {"safe": 0, "low": 1, "medium": 2, "high": 3}
_CATEGORY = re.compile(r"[a-z][a-z0-9_]{0,39}")


def severity(probability: float) -> Severity:
    for name, edge in BANDS:
        if probability >= edge:
            return name
    return "safe"


def blocks(level: Severity, threshold: Threshold) -> bool:
    """Whether content of severity ``level`` is blocked under ``threshold``."""
    return threshold != "off" and level != "safe" and _RANK[level] >= _RANK[threshold]


def _prompt_defaults() -> dict[str, Threshold]:
    return {**{c: "medium" for c in HARM}, "jailbreak": "medium", "indirect_attack": "medium", PROFANITY: "off"}


def _completion_defaults() -> dict[str, Threshold]:
    return {**{c: "medium" for c in HARM}, PROFANITY: "off"}


class SafetyPolicy(BaseModel):
    """A content filter policy. Categories absent from a direction are not checked in it."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="false: no checks at all, no annotations.")
    prompt: dict[str, Threshold] = Field(
        default_factory=_prompt_defaults, description="Per category, the threshold applied to prompts: "
        "harm categories (hate, sexual, violence, self_harm) block at this severity and above; jailbreak "
        "(user messages), indirect_attack (system, developer and tool messages), profanity and custom "
        "categories block when detected unless off.")
    completion: dict[str, Threshold] = Field(
        default_factory=_completion_defaults, description="Per category, the threshold applied to completions.")
    blocklists: list[str] = Field(default_factory=list, max_length=32, description="Names of the project's "
                                  "blocklists checked in both directions; a match always blocks.")
    fail_closed: bool = Field(default=False, description="When a classifier fails: false answers with an "
                              "error annotation (content passes), true refuses (503 content_filter_error).")
    stream_window: int = Field(default=160, ge=16, le=4000, description="Characters of a streamed completion "
                               "checked at a time; that much is held back from the client until checked.")

    @field_validator("prompt", "completion")
    @classmethod
    def _names(cls, value: dict[str, Threshold]) -> dict[str, Threshold]:
        bad = [name for name in value if not _CATEGORY.fullmatch(name)]
        if bad:
            raise ValueError(f"category names must be lower-case letters, digits and '_': {bad}")
        return value

    def categories(self) -> set[str]:
        return set(self.prompt) | set(self.completion)


DEFAULT_POLICY = SafetyPolicy()
