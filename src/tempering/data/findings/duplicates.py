"""Duplicates within training (exact, near, same prompt with other answers) and leakage of validation
examples into training, with the findings they lead to."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from pydantic import BaseModel, Field

from tempering.data.findings.finding import Finding, lines_text
from tempering.data.findings.keys import exact_key, near_key, preview, prompt_key
from tempering.data.formats import Example


class DuplicateGroup(BaseModel):
    lines: list[int] = Field(description="Training lines in the group, first occurrence first.")
    validation_lines: list[int] = Field(default_factory=list)
    preview: str


class Duplicates(BaseModel):
    exact: list[DuplicateGroup] = Field(description="Identical examples within training.")
    near: list[DuplicateGroup] = Field(
        description="Examples equal after normalization (case, punctuation, spacing) but not identical."
    )
    repeated_prompts: list[DuplicateGroup] = Field(
        description="The same prompt (normalized) with different answers within training."
    )
    exact_extra: int = Field(description="Examples that repeat an earlier one exactly.")
    near_extra: int = Field(description="Further examples that repeat an earlier one after normalization.")
    leaked_exact: list[DuplicateGroup] = Field(default_factory=list)
    leaked_near: list[DuplicateGroup] = Field(default_factory=list)
    leaked_prompts: list[DuplicateGroup] = Field(
        default_factory=list, description="Validation prompts also asked in training (answers may differ)."
    )


def _groups(examples: Iterable[Example], key) -> dict[tuple, list[Example]]:
    groups: dict[tuple, list[Example]] = defaultdict(list)
    for example in examples:
        groups[key(example.messages)].append(example)
    return groups


def find_duplicates(train: list[Example], validation: list[Example] | None) -> Duplicates:
    exact_groups = _groups(train, exact_key)
    near_groups = _groups(train, near_key)
    prompt_groups = _groups(train, prompt_key)

    def group(members: list[Example], valid: list[Example] = ()) -> DuplicateGroup:
        return DuplicateGroup(
            lines=[e.line for e in members],
            validation_lines=[e.line for e in valid],
            preview=preview((members or valid)[0].messages),
        )

    exact = [group(g) for g in exact_groups.values() if len(g) > 1]
    near = [group(g) for g in near_groups.values() if len({exact_key(e.messages) for e in g}) > 1]
    repeated = [group(g) for g in prompt_groups.values() if len({near_key(e.messages) for e in g}) > 1]
    result = Duplicates(
        exact=exact,
        near=near,
        repeated_prompts=repeated,
        exact_extra=sum(len(g) - 1 for g in exact_groups.values()),
        near_extra=sum(len(g) - 1 for g in near_groups.values())
        - sum(len(g) - 1 for g in exact_groups.values()),
    )
    if validation:
        for name, key, train_groups in (
            ("leaked_exact", exact_key, exact_groups),
            ("leaked_near", near_key, near_groups),
            ("leaked_prompts", prompt_key, prompt_groups),
        ):
            leaked = [
                group(train_groups[k], v) for k, v in _groups(validation, key).items() if k in train_groups
            ]
            setattr(result, name, leaked)
        exact_leaks = {tuple(g.validation_lines) for g in result.leaked_exact}
        result.leaked_near = [g for g in result.leaked_near if tuple(g.validation_lines) not in exact_leaks]
        near_leaks = {tuple(g.validation_lines) for g in result.leaked_exact + result.leaked_near}
        result.leaked_prompts = [
            g for g in result.leaked_prompts if tuple(g.validation_lines) not in near_leaks
        ]
    return result


def duplicate_findings(d: Duplicates) -> list[Finding]:
    findings = []
    if d.exact_extra:
        repeats = sorted(n for g in d.exact for n in g.lines[1:])
        findings.append(
            Finding(
                level="warning",
                code="exact_duplicate",
                lines=repeats,
                message=(
                    f"{d.exact_extra} example(s) repeat an earlier one exactly ({len(d.exact)} group(s)); "
                    "lines "
                    f"{lines_text(repeats)}"
                ),
            )
        )
    if d.near_extra:
        lines = sorted(n for g in d.near for n in g.lines)
        findings.append(
            Finding(
                level="warning",
                code="near_duplicate",
                lines=lines,
                message=(
                    f"{d.near_extra} more example(s) repeat another after normalizing case, punctuation and "
                    "spacing "
                    f"({len(d.near)} group(s)); lines {lines_text(lines)}"
                ),
            )
        )
    if d.repeated_prompts:
        lines = sorted(n for g in d.repeated_prompts for n in g.lines)
        top = max(d.repeated_prompts, key=lambda g: len(g.lines))
        findings.append(
            Finding(
                level="info",
                code="repeated_prompt",
                lines=lines,
                message=(
                    f"{len(d.repeated_prompts)} prompt(s) appear more than once with different answers "
                    f"({len(lines)} "
                    f"examples); the most repeated, {len(top.lines)} times: {top.preview!r}"
                ),
            )
        )
    for code, groups, what in (
        ("leak_exact", d.leaked_exact, "repeat training examples exactly"),
        ("leak_near", d.leaked_near, "repeat training examples after normalization"),
        ("leak_prompt", d.leaked_prompts, "ask a prompt that training also asks"),
    ):
        if groups:
            valid = sorted(n for g in groups for n in g.validation_lines)
            train = sorted(n for g in groups for n in g.lines)
            findings.append(
                Finding(
                    level="warning",
                    code=code,
                    lines=train,
                    validation_lines=valid,
                    message=(
                        f"{len(valid)} validation example(s) {what} (validation lines {lines_text(valid)}): "
                        "validation scores will look better than the model is"
                    ),
                )
            )
    return findings
