"""The checks behind the data quality report, each a measurement and the findings it leads to.

Owns the text keys that decide when two examples are the same (exact, near, same prompt; ``data.split``
uses them too), label inference from repeated short answers, and the detectors: duplicates and leakage
across training/validation, labels and imbalance, diversity, suspicious content (mojibake, escapes,
control characters, likely PII). Each detector returns its pydantic measurement and a list of ``Finding``
with the line numbers it is about. Knows nothing about files, formats, tokenizers or the verdict: it is
handed converted examples, and ``data.report`` composes its results into the report.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from tempering.data.formats import Example
from tempering.data.validate import distribution_stats

MIN_PER_CLASS = 5  # fewer examples than this per class and a class is barely learned, let alone measured
IMBALANCE_WARNING = 10.0  # most common / rarest class
DOMINANT_SHARE = 0.5  # one answer (or one opening) for more than half the examples
MAX_LABEL_CHARS, MAX_LABEL_WORDS = 40, 5  # "short answers that repeat" are treated as labels
PREVIEW_CHARS = 80

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


class LabelStats(BaseModel):
    source: Literal["column", "assistant_answers"]
    counts: dict[str, int] = Field(description="Examples per class, most common first.")
    n_classes: int
    imbalance_ratio: float = Field(description="Most common class count / rarest class count.")
    rare_classes: list[str] = Field(description=f"Classes with fewer than {MIN_PER_CLASS} examples.")
    unsplittable_classes: list[str] = Field(
        description="Classes with a single example: they cannot appear on both sides of a split."
    )
    validation_counts: dict[str, int] | None = None
    missing_from_validation: list[str] = Field(default_factory=list)
    unseen_in_training: list[str] = Field(default_factory=list)


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


# ---------------------------------------------------------------- text keys


def normalize(text: str) -> str:
    """Compatibility-folded, case-folded, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(c if c.isalnum() else " " for c in text)
    return " ".join(kept.split())


def exact_key(messages: list[dict]) -> tuple:
    return tuple((m["role"], m["content"]) for m in messages)


def near_key(messages: list[dict]) -> tuple:
    return tuple((m["role"], normalize(m["content"])) for m in messages)


def prompt_key(messages: list[dict]) -> tuple:
    """Everything the model is given (system and user turns), normalized: two examples with the same
    prompt on both sides of a split leak the answer even when the answers differ."""
    return tuple((m["role"], normalize(m["content"])) for m in messages if m["role"] != "assistant")


def _final_answer(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")


def infer_labels(examples: Sequence[list[dict]]) -> list[str] | None:
    """The final assistant answers as class labels, when they look like labels: short, one line, and
    repeating (at most a third as many distinct answers as examples). None otherwise."""
    answers = [_final_answer(m).strip() for m in examples]
    if len(answers) < 2:
        return None
    short = all(
        a and len(a) <= MAX_LABEL_CHARS and len(a.split()) <= MAX_LABEL_WORDS and "\n" not in a
        for a in answers
    )
    if short and len(set(answers)) <= max(2, len(answers) // 3):
        return answers
    return None


def _preview(messages: list[dict]) -> str:
    text = " | ".join(m["content"].replace("\n", " ") for m in messages if m["role"] != "system")
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def distribution(values: Sequence[float]) -> Distribution | None:
    """``validate.distribution_stats`` plus the mean, as a model; None for no values."""
    if not values:
        return None
    return Distribution(mean=round(statistics.fmean(values), 2), **distribution_stats(values))


def lines_text(lines: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (f", … ({len(lines)} in all)" if len(lines) > limit else "")


# ---------------------------------------------------------------- duplicates and leakage


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
            preview=_preview((members or valid)[0].messages),
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


# ---------------------------------------------------------------- labels


def label_stats(train: list[Example], validation: list[Example] | None) -> LabelStats | None:
    if train and all(e.label is not None for e in train):
        source, labels = "column", [e.label for e in train]
    else:
        source, labels = "assistant_answers", infer_labels([e.messages for e in train])
    if not labels:
        return None
    counts = Counter(labels)
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    stats = LabelStats(
        source=source,
        counts=ordered,
        n_classes=len(counts),
        imbalance_ratio=round(max(counts.values()) / min(counts.values()), 2),
        rare_classes=[c for c, n in ordered.items() if n < MIN_PER_CLASS],
        unsplittable_classes=[c for c, n in ordered.items() if n < 2],
    )
    if validation:
        valid_labels = [
            e.label if e.label is not None else _final_answer(e.messages).strip() for e in validation
        ]
        valid_counts = Counter(valid_labels)
        stats.validation_counts = dict(sorted(valid_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        stats.missing_from_validation = [c for c in ordered if c not in valid_counts]
        stats.unseen_in_training = sorted(c for c in valid_counts if c not in counts)
    return stats


def label_findings(stats: LabelStats | None, train: list[Example]) -> list[Finding]:
    if stats is None:
        return []
    labels = [e.label if e.label is not None else _final_answer(e.messages).strip() for e in train]
    lines_of = lambda classes: [e.line for e, lab in zip(train, labels) if lab in classes]
    source = "label column" if stats.source == "column" else "repeated short answers"
    findings = [
        Finding(
            level="info",
            code="labels",
            message=(
                f"{stats.n_classes} classes (from the {source}"
                f"); most common {next(iter(stats.counts.items()))}, rarest {list(stats.counts.items())[-1]}"
            ),
        )
    ]
    if stats.imbalance_ratio >= IMBALANCE_WARNING:
        findings.append(
            Finding(
                level="warning",
                code="label_imbalance",
                message=(
                    f"imbalance ratio {stats.imbalance_ratio:g}:1 between the most common and the rarest "
                    "class"
                ),
            )
        )
    if stats.rare_classes:
        findings.append(
            Finding(
                level="warning",
                code="rare_classes",
                lines=lines_of(set(stats.rare_classes)),
                message=f"{len(stats.rare_classes)} class(es) have fewer than {MIN_PER_CLASS} "
                f"examples: {', '.join(stats.rare_classes[:10])}",
            )
        )
    if stats.unsplittable_classes:
        findings.append(
            Finding(
                level="warning",
                code="unsplittable_classes",
                lines=lines_of(set(stats.unsplittable_classes)),
                message=f"{len(stats.unsplittable_classes)} class(es) have a single example, so a split "
                "cannot put "
                "them on both sides",
            )
        )
    if stats.missing_from_validation:
        findings.append(
            Finding(
                level="warning",
                code="classes_missing_from_validation",
                message=(
                    f"{len(stats.missing_from_validation)} training class(es) never appear in validation: "
                    f"{', '.join(stats.missing_from_validation[:10])}"
                ),
            )
        )
    if stats.unseen_in_training:
        findings.append(
            Finding(
                level="warning",
                code="classes_unseen_in_training",
                message=(
                    f"validation has {len(stats.unseen_in_training)} class(es) training never shows: "
                    f"{', '.join(stats.unseen_in_training[:10])}"
                ),
            )
        )
    return findings


# ---------------------------------------------------------------- diversity


def _opening(messages: list[dict]) -> str:
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    return " ".join(normalize(first).split()[:3])


def diversity_stats(train: list[Example]) -> Diversity:
    systems = {m["content"] for e in train for m in e.messages if m["role"] == "system"}
    openings = Counter(_opening(e.messages) for e in train)
    answers = [_final_answer(e.messages) for e in train]
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
        lines = [e.line for e in train if _final_answer(e.messages).strip() == d.top_assistant_answer]
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


# ---------------------------------------------------------------- suspicious content

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
# Digit groups inside a longer run of digit groups (a card number, an id) are not a phone number.
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[\s.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])"
    r"\d{3,4}[\s.-]\d{3,4}(?!\w)(?![\s.-]\d)"
)
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_ESCAPED = re.compile(r"\\u[0-9a-fA-F]{4}")
_GLUED = re.compile(r"[a-z],[a-z]")
# Runs of characters that UTF-8 text read as Latin-1/cp1252 is made of ("Ã©", "â€™").
_LATIN_RUN = re.compile(
    r"[\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    r"\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]{2,}"
)
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\ufeff"}

SUSPICIOUS_CODES = {
    "mojibake": "text that looks like UTF-8 decoded as Latin-1 or cp1252 ('Ã©', 'â€™')",
    "replacement_character": "U+FFFD: bytes were lost in an earlier decoding",
    "escaped_unicode": "a literal \\uXXXX escape left in the text (escaped twice)",
    "control_characters": "control or invisible characters other than tab and newline",
    "missing_space": "a comma glued to the next word ('visit,t'), often a sign of damaged text",
    "pii_email": "looks like an email address",
    "pii_phone": "looks like a phone number",
    "pii_card": "looks like a payment card number (passes the Luhn check)",
}


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _is_mojibake(run: str) -> bool:
    for encoding in ("cp1252", "latin-1"):
        try:
            run.encode(encoding).decode("utf-8")
            return True
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    return False


def content_flags(text: str) -> set[str]:
    """Codes of ``SUSPICIOUS_CODES`` that apply to ``text``."""
    flags = set()
    if any(_is_mojibake(run) for run in _LATIN_RUN.findall(text)):
        flags.add("mojibake")
    if "\ufffd" in text:
        flags.add("replacement_character")
    if _ESCAPED.search(text):
        flags.add("escaped_unicode")
    if any((unicodedata.category(c) == "Cc" and c not in "\t\n\r") or c in _INVISIBLE for c in text):
        flags.add("control_characters")
    if _GLUED.search(text):
        flags.add("missing_space")
    if _EMAIL.search(text):
        flags.add("pii_email")
    if _PHONE.search(text):
        flags.add("pii_phone")
    if any(_luhn(re.sub(r"\D", "", m)) for m in _CARD.findall(text)):
        flags.add("pii_card")
    return flags


def content_findings(train: list[Example], validation: list[Example] | None) -> list[Finding]:
    hits: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for side, examples in ((0, train), (1, validation or [])):
        for example in examples:
            flags = set().union(*(content_flags(m["content"]) for m in example.messages))
            for code in flags:
                hits[code][side].append(example.line)
    findings = []
    for code, description in SUSPICIOUS_CODES.items():
        if code in hits:
            train_lines, valid_lines = hits[code]
            where = (
                [f"{len(train_lines)} training example(s) (lines {lines_text(train_lines)})"]
                if train_lines
                else []
            )
            where += (
                [f"{len(valid_lines)} validation example(s) (lines {lines_text(valid_lines)})"]
                if valid_lines
                else []
            )
            findings.append(
                Finding(
                    level="warning",
                    code=code,
                    lines=train_lines,
                    validation_lines=valid_lines,
                    message=f"{description}: {' and '.join(where)}",
                )
            )
    return findings
