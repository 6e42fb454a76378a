"""The data quality report: what a careful ML engineer would check before a single training step runs.

Owns counts and token distributions (through the model's template, via ``data.encode``), exact and near
duplicates within the training file and across training/validation (leakage), labels and their balance,
diversity, suspicious content (empty turns, mojibake, control characters, likely PII) and a verdict with
concrete advice. Every finding carries the line numbers it is about. The result is one pydantic model,
rendered as tables by the CLI and as JSON for the API and portal. Knows nothing about model weights,
training or HTTP; it is handed a tokenizer, never loads one.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tempering.data.formats import ConversionReport, Example, read_examples
from tempering.data.validate import MIN_EXAMPLES

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


class Counts(BaseModel):
    examples: int
    validation_examples: int | None = None
    messages_by_role: dict[str, int]
    tokens_by_role: dict[str, int] | None = Field(
        default=None, description="Content tokens per role (without the template's markers)."
    )
    tokens_per_example: Distribution | None = Field(
        default=None, description="Tokens per example through the model's chat template."
    )
    trained_tokens_per_example: Distribution | None = Field(
        default=None, description="Tokens that carry loss (assistant turns) per example."
    )
    context_length: int | None = None
    over_context: list[int] = Field(default_factory=list, description="Lines longer than the context.")


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


class Verdict(BaseModel):
    status: Literal["ready", "review", "blocked"]
    summary: str
    advice: list[str]


class DataReport(BaseModel):
    train_file: str | None
    validation_file: str | None
    format: str | None
    model: str | None
    counts: Counts
    duplicates: Duplicates
    labels: LabelStats | None
    diversity: Diversity
    findings: list[Finding]
    verdict: Verdict


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


def _distribution(values: Sequence[float]) -> Distribution | None:
    if not values:
        return None
    ordered = sorted(values)
    return Distribution(
        min=ordered[0],
        median=statistics.median(ordered),
        p95=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        max=ordered[-1],
        mean=round(statistics.fmean(ordered), 2),
        total=sum(ordered),
    )


def _lines_text(lines: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (f", … ({len(lines)} in all)" if len(lines) > limit else "")


# ---------------------------------------------------------------- counts


def _counts(
    train: list[Example], validation: list[Example] | None, tokenizer, context_length: int | None
) -> Counts:
    from tempering.data.encode import encode_chat

    roles: Counter = Counter(m["role"] for e in train for m in e.messages)
    counts = Counts(
        examples=len(train),
        validation_examples=None if validation is None else len(validation),
        messages_by_role=dict(roles),
        context_length=context_length,
    )
    if tokenizer is None or not train:
        return counts
    totals, trained, over = [], [], []
    for example in train:
        encoded = encode_chat(tokenizer, example.messages)
        totals.append(len(encoded))
        trained.append(encoded.n_trained)
        if context_length is not None and len(encoded) > context_length:
            over.append(example.line)
    by_role: Counter = Counter()
    contents = [(m["role"], m["content"]) for e in train for m in e.messages]
    ids = tokenizer([c for _, c in contents], add_special_tokens=False)["input_ids"]
    for (role, _), tokens in zip(contents, ids):
        by_role[role] += len(tokens)
    counts.tokens_by_role = dict(by_role)
    counts.tokens_per_example = _distribution(totals)
    counts.trained_tokens_per_example = _distribution(trained)
    counts.over_context = over
    return counts


# ---------------------------------------------------------------- duplicates and leakage


def _groups(examples: Iterable[Example], key) -> dict[tuple, list[Example]]:
    groups: dict[tuple, list[Example]] = defaultdict(list)
    for example in examples:
        groups[key(example.messages)].append(example)
    return groups


def _duplicates(train: list[Example], validation: list[Example] | None) -> Duplicates:
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


def _duplicate_findings(d: Duplicates) -> list[Finding]:
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
                    f"{_lines_text(repeats)}"
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
                    f"({len(d.near)} group(s)); lines {_lines_text(lines)}"
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
                        f"{len(valid)} validation example(s) {what} (validation lines {_lines_text(valid)}): "
                        "validation scores will look better than the model is"
                    ),
                )
            )
    return findings


# ---------------------------------------------------------------- labels


def _label_stats(train: list[Example], validation: list[Example] | None) -> LabelStats | None:
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


def _label_findings(stats: LabelStats | None, train: list[Example]) -> list[Finding]:
    if stats is None:
        return []
    labels = [e.label if e.label is not None else _final_answer(e.messages).strip() for e in train]
    lines_of = lambda classes: [e.line for e, lab in zip(train, labels) if lab in classes]  # noqa: E731
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


def _diversity(train: list[Example]) -> Diversity:
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
        assistant_chars=_distribution(lengths),
        assistant_length_cv=round(statistics.pstdev(lengths) / mean, 3) if mean else None,
        distinct_assistant_answers=len(answer_counts),
        top_assistant_answer=top_answer,
        top_assistant_answer_share=round(top_answer_n / n, 4),
    )


def _diversity_findings(d: Diversity, train: list[Example], labelled: bool) -> list[Finding]:
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


def _content_findings(train: list[Example], validation: list[Example] | None) -> list[Finding]:
    hits: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for side, examples in ((0, train), (1, validation or [])):
        for example in examples:
            flags = set().union(*(content_flags(m["content"]) for m in example.messages))
            for code in flags:
                hits[code][side].append(example.line)
    findings = []
    for code in SUSPICIOUS_CODES:
        if code in hits:
            train_lines, valid_lines = hits[code]
            where = (
                [f"{len(train_lines)} training example(s) (lines {_lines_text(train_lines)})"]
                if train_lines
                else []
            )
            where += (
                [f"{len(valid_lines)} validation example(s) (lines {_lines_text(valid_lines)})"]
                if valid_lines
                else []
            )
            findings.append(
                Finding(
                    level="warning",
                    code=code,
                    lines=train_lines,
                    validation_lines=valid_lines,
                    message=f"{SUSPICIOUS_CODES[code]}: {' and '.join(where)}",
                )
            )
    return findings


# ---------------------------------------------------------------- conversion problems, verdict


def _conversion_findings(conversion: ConversionReport | None, side: str) -> list[Finding]:
    if conversion is None:
        return []
    findings = []
    facts = conversion.stats
    if (
        facts.get("line_endings") in ("CRLF", "mixed")
        or facts.get("bom")
        or not facts.get("final_newline", True)
    ):
        seen = [f"{facts['line_endings']} line endings"] + ["a UTF-8 BOM"] * bool(facts.get("bom"))
        seen += ["no final newline"] * (not facts.get("final_newline", True))
        findings.append(
            Finding(
                level="info",
                code="file_layout",
                message=(
                    f"{side} file has {', '.join(seen)}: read correctly; `data convert` writes LF with a "
                    "final newline"
                ),
            )
        )
    for level, issues in (("error", conversion.errors), ("info", conversion.warnings)):
        by_code: dict[str, list] = defaultdict(list)
        for issue in issues:
            by_code[issue.code].append(issue)
        for code, group in by_code.items():
            lines = [i.line for i in group if i.line is not None]
            where = f" (lines {_lines_text(lines)})" if lines else ""
            message = f"{side} file: {len(group)} × {group[0].message}{where}"
            kwargs = {"lines": lines} if side == "training" else {"validation_lines": lines}
            findings.append(Finding(level=level, code=code, message=message, **kwargs))
    return findings


def _advice(findings: list[Finding], report: DataReport, split_fraction: float) -> list[str]:
    by_code = {f.code: f for f in findings}
    advice = []
    errors = [f for f in findings if f.level == "error"]
    if errors:
        lines = sorted({n for f in errors for n in f.lines + f.validation_lines})
        advice.append(
            f"Fix {len(errors)} kind(s) of error first ({', '.join(f.code for f in errors)}) on lines "
            f"{_lines_text(lines)}, or leave those lines out (`data convert --skip-invalid`)."
        )
    if "exact_duplicate" in by_code or "near_duplicate" in by_code:
        extra = report.duplicates.exact_extra + report.duplicates.near_extra
        advice.append(
            f"Remove {extra} duplicate example(s): repeats are trained on more often than the rest "
            "and make the model parrot them."
        )
    if any(c in by_code for c in ("leak_exact", "leak_near", "leak_prompt")):
        n = sum(
            len(by_code[c].validation_lines)
            for c in ("leak_exact", "leak_near", "leak_prompt")
            if c in by_code
        )
        advice.append(
            f"Drop the {n} validation example(s) that also appear in training, or re-split with "
            "`tempering data split` (it keeps duplicates on one side)."
        )
    labels = report.labels
    if labels and labels.rare_classes:
        advice.append(
            f"{len(labels.rare_classes)} class(es) have fewer than {MIN_PER_CLASS} examples: add "
            "examples or merge them into related classes."
        )
    if labels and labels.imbalance_ratio >= IMBALANCE_WARNING:
        common, rare = next(iter(labels.counts)), list(labels.counts)[-1]
        advice.append(
            f"Classes are imbalanced {labels.imbalance_ratio:g}:1 ({common!r} vs {rare!r}): collect more "
            "of the rare classes or cap the common ones."
        )
    if "dominant_answer" in by_code:
        advice.append(
            "One answer dominates: add examples with other answers, or the model learns to give it "
            "to everything."
        )
    if report.counts.over_context:
        advice.append(
            f"Shorten or drop {len(report.counts.over_context)} example(s) longer than the model's "
            f"context ({report.counts.context_length} tokens)."
        )
    if any(c.startswith("pii_") for c in by_code):
        advice.append(
            "Review the lines that look like personal data (emails, phone or card numbers): a "
            "fine-tuned model can repeat them verbatim."
        )
    if any(
        c in by_code
        for c in (
            "mojibake",
            "replacement_character",
            "escaped_unicode",
            "control_characters",
            "missing_space",
        )
    ):
        advice.append(
            "Clean the damaged text (mojibake, escapes, control characters, glued words) at its "
            "source; the model learns the damage too."
        )
    if report.counts.examples < MIN_EXAMPLES:
        advice.append(
            f"Add examples: fine-tuning needs at least {MIN_EXAMPLES}, and 50-100 is a sensible start."
        )
    if report.counts.validation_examples is None:
        split = "stratified by label, " if labels else ""
        advice.append(
            f"No validation file: hold out {split_fraction:.0%} with `tempering data split` ({split}"
            "duplicates kept on one side), so results are measured on unseen examples."
        )
    return advice


def _verdict(findings: list[Finding], report: DataReport, split_fraction: float) -> Verdict:
    n_errors = sum(f.level == "error" for f in findings)
    n_warnings = sum(f.level == "warning" for f in findings)
    status = "blocked" if n_errors else "review" if n_warnings else "ready"
    summary = {
        "blocked": f"{n_errors} error(s) must be fixed before training",
        "review": f"trainable, but {n_warnings} warning(s) deserve a look",
        "ready": "no problems found",
    }[status]
    return Verdict(status=status, summary=summary, advice=_advice(findings, report, split_fraction))


def build_report(
    train: list[Example],
    validation: list[Example] | None = None,
    *,
    tokenizer=None,
    context_length: int | None = None,
    conversions: tuple[ConversionReport | None, ConversionReport | None] = (None, None),
    train_file: str | None = None,
    validation_file: str | None = None,
    model: str | None = None,
    split_fraction: float = 0.1,
) -> DataReport:
    """The quality report for converted examples (``formats.read_examples``). With a tokenizer, token
    counts go through its chat template; ``conversions`` (training, validation) add their problems."""
    findings = _conversion_findings(conversions[0], "training") + _conversion_findings(
        conversions[1], "validation"
    )
    counts = _counts(train, validation, tokenizer, context_length)
    if counts.over_context:
        findings.append(
            Finding(
                level="error",
                code="too_long",
                lines=counts.over_context,
                message=(
                    f"{len(counts.over_context)} example(s) longer than the model's context of "
                    f"{context_length} "
                    f"tokens: lines {_lines_text(counts.over_context)}"
                ),
            )
        )
    if len(train) < MIN_EXAMPLES:
        findings.append(
            Finding(
                level="error",
                code="too_few_examples",
                message=(f"{len(train)} usable example(s); fine-tuning needs at least {MIN_EXAMPLES}"),
            )
        )
    duplicates = _duplicates(train, validation)
    labels = _label_stats(train, validation)
    diversity = _diversity(train)
    findings += _duplicate_findings(duplicates) + _label_findings(labels, train)
    findings += _diversity_findings(diversity, train, labels is not None) + _content_findings(
        train, validation
    )
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f.level])
    report = DataReport(
        train_file=train_file,
        validation_file=validation_file,
        format=conversions[0].format if conversions[0] else None,
        model=model,
        counts=counts,
        duplicates=duplicates,
        labels=labels,
        diversity=diversity,
        findings=findings,
        verdict=Verdict(status="ready", summary="", advice=[]),
    )
    report.verdict = _verdict(findings, report, split_fraction)
    return report


def report_files(
    train_file: str | Path,
    validation_file: str | Path | None = None,
    *,
    format: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    tokenizer=None,
    context_length: int | None = None,
    model: str | None = None,
) -> DataReport:
    """Read (any supported format; bad lines become findings) and report on a training file and an
    optional validation file."""
    options = {"text_column": text_column, "label_column": label_column}
    train, train_conv = read_examples(train_file, format, **options)
    validation, valid_conv = None, None
    if validation_file is not None:
        validation, valid_conv = read_examples(validation_file, format, **options)
    return build_report(
        train,
        validation,
        tokenizer=tokenizer,
        context_length=context_length,
        conversions=(train_conv, valid_conv),
        train_file=str(train_file),
        validation_file=None if validation_file is None else str(validation_file),
        model=model,
    )
