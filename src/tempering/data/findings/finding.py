"""The vocabulary every check shares: a ``Finding`` (level, code, message, the lines it is about), a
``Distribution`` of numbers, and how line lists are written in messages. Knows no particular check."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from tempering.data.validate import distribution_stats

Level = Literal["error", "warning", "info"]


class Finding(BaseModel):
    level: Level = Field(description="error: blocks training; warning: review it; info: worth knowing.")
    code: str = Field(description="Stable machine-readable code.")
    message: str
    lines: list[int] = Field(default_factory=list, description="Training file lines this is about.")
    validation_lines: list[int] = Field(default_factory=list, description="Validation file lines.")


class Distribution(BaseModel):
    min: float
    median: float
    p95: float
    max: float
    mean: float
    total: float


def distribution(values: Sequence[float]) -> Distribution | None:
    """``validate.distribution_stats`` plus the mean, as a model; None for no values."""
    if not values:
        return None
    return Distribution(mean=round(statistics.fmean(values), 2), **distribution_stats(values))


def lines_text(lines: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (f", … ({len(lines)} in all)" if len(lines) > limit else "")
