"""Diversity: distinct prompts, openings and answers, and one answer or one opening dominating."""

from __future__ import annotations

import statistics
from collections import Counter

from pydantic import BaseModel, Field

from tempering.data.findings.finding import Distribution, Finding, distribution
from tempering.data.findings.keys import final_answer, normalize, prompt_key
from tempering.data.formats import Example

DOMINANT_SHARE = 0.5  # one answer (or one opening) for more than half the examples


class Diversity(BaseModel):
    distinct_system_prompts: int
    distinct_prompts: int = Field(description="Distinct prompts (system and user turns, normalized).")
    distinct_user_openings: int = Field(description="Distinct first three words of the first user turn.")
    top_user_opening: str | None
    top_user_opening_share: float
    assistant_chars: Distribution | None = Field(description="Assistant answer length in characters.")
    assistant_length_cv: float | None = Field(description="Std / mean of the answer lengths: the spread.")
    distinct_assistant_answers: int
    top_assistant_answer: str | None
    top_assistant_answer_share: float


def _opening(messages: list[dict]) -> str:
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    return " ".join(normalize(first).split()[:3])


def diversity_stats(train: list[Example]) -> Diversity:
    systems = {m["content"] for e in train for m in e.messages if m["role"] == "system"}
    openings = Counter(_opening(e.messages) for e in train)
    answers = [final_answer(e.messages) for e in train]
    answer_counts = Counter(a.strip() for a in answers)
    lengths = [len(a) for a in answers]
    mean = statistics.fmean(lengths) if lengths else 0.0
    top_opening, top_opening_n = openings.most_common(1)[0] if openings else (None, 0)
    top_answer, top_answer_n = answer_counts.most_common(1)[0] if answer_counts else (None, 0)
    n = max(len(train), 1)
    return Diversity(
        distinct_system_prompts=len(systems),
        distinct_prompts=len({prompt_key(e.messages) for e in train}),
        distinct_user_openings=len(openings),
        top_user_opening=top_opening,
        top_user_opening_share=round(top_opening_n / n, 4),
        assistant_chars=distribution(lengths),
        assistant_length_cv=round(statistics.pstdev(lengths) / mean, 3) if mean else None,
        distinct_assistant_answers=len(answer_counts),
        top_assistant_answer=top_answer,
        top_assistant_answer_share=round(top_answer_n / n, 4),
    )


def diversity_findings(d: Diversity, train: list[Example], labelled: bool) -> list[Finding]:
    findings = []
    if not labelled and d.top_assistant_answer_share > DOMINANT_SHARE and len(train) > 1:
        lines = [e.line for e in train if final_answer(e.messages).strip() == d.top_assistant_answer]
        findings.append(
            Finding(
                level="warning",
                code="dominant_answer",
                lines=lines,
                message=(
                    f"{d.top_assistant_answer_share:.0%} of the examples end with the same answer "
                    f"{d.top_assistant_answer[:60]!r}: the model will learn to say mostly that"
                ),
            )
        )
    if d.top_user_opening_share > DOMINANT_SHARE and d.distinct_user_openings > 1:
        lines = [e.line for e in train if _opening(e.messages) == d.top_user_opening]
        findings.append(
            Finding(
                level="info",
                code="repetitive_openings",
                lines=lines,
                message=(
                    f"{d.top_user_opening_share:.0%} of the user turns open with {d.top_user_opening!r}"
                ),
            )
        )
    if d.distinct_system_prompts > 1:
        findings.append(
            Finding(
                level="info",
                code="several_system_prompts",
                message=(
                    f"{d.distinct_system_prompts} distinct system prompts: the model will be served with one "
                    "of them"
                ),
            )
        )
    return findings
