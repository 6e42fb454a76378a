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


class Bin(BaseModel):
    low: float = Field(description="Inclusive lower edge.")
    high: float = Field(description="Upper edge, exclusive (the last bin also holds the maximum).")
    count: int


class Distribution(BaseModel):
    min: float
    median: float
    p95: float
    max: float
    mean: float
    total: float
    histogram: list[Bin] = Field(default_factory=list, description="Counts in equal-width bins from min to max "
                                 "(where asked for: tokens per example).")


def histogram(values: Sequence[float], bins: int) -> list[Bin]:
    """``values`` counted in ``bins`` equal-width bins from their min to their max (whole-number edges when the
    values are whole numbers; one bin when they are all equal)."""
    low, high = min(values), max(values)
    if high == low:
        return [Bin(low=low, high=high, count=len(values))]
    width = (high - low) / bins
    if all(float(v).is_integer() for v in values):
        width = max(1, -(-(high - low + 1) // bins))  # whole-number bins that cover high
    edges = [low + i * width for i in range(bins + 1)]
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) // width))] += 1
    return [Bin(low=edges[i], high=edges[i + 1], count=c) for i, c in enumerate(counts)
            if edges[i] <= high]


def bin_label(low: float, high: float, whole: bool) -> str:
    """A bin as people read it: bins of whole numbers (token counts) by their first and last number ("10–18"),
    others by their edges."""
    if whole:
        top = max(low, high - 1)
        return f"{low:,.0f}–{top:,.0f}" if top > low else f"{low:,.0f}"
    return f"{low:,.4g}–{high:,.4g}"


def distribution(values: Sequence[float], bins: int = 0) -> Distribution | None:
    """``validate.distribution_stats`` plus the mean (and a histogram of ``bins`` bins), as a model; None for no
    values."""
    if not values:
        return None
    return Distribution(mean=round(statistics.fmean(values), 2), **distribution_stats(values),
                        histogram=histogram(values, bins) if bins else [])


def lines_text(lines: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (f", … ({len(lines)} in all)" if len(lines) > limit else "")
