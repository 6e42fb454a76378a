"""The data quality report: what a careful ML engineer would check before a single training step runs.

Owns the report as a whole: counts and token distributions (through the model's template, via
``data.encode``), the problems the conversion of each file ran into, the verdict with concrete advice, and
``build_report`` / ``report_files``, which run the checks of ``data.findings`` (duplicates and leakage,
labels, diversity, suspicious content) and put it all in one pydantic model, rendered as tables by the CLI
and as JSON for the API and portal. Every finding carries the line numbers it is about. Knows nothing
about model weights, training or HTTP; it is handed a tokenizer, never loads one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tempering.data.findings import (
    IMBALANCE_WARNING,
    MIN_PER_CLASS,
    Distribution,
    Diversity,
    Duplicates,
    Finding,
    LabelStats,
    content_findings,
    distribution,
    diversity_findings,
    diversity_stats,
    duplicate_findings,
    find_duplicates,
    label_findings,
    label_stats,
    lines_text,
)
from tempering.data.formats import ConversionReport, Example, read_examples
from tempering.data.validate import MIN_EXAMPLES

HISTOGRAM_BINS = 12  # of tokens per example


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
    counts.tokens_per_example = distribution(totals, bins=HISTOGRAM_BINS)
    counts.trained_tokens_per_example = distribution(trained)
    counts.over_context = over
    return counts


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
            lines = sorted(n for i in group for n in (i.lines or [i.line]) if n is not None)
            count = sum(i.count or 1 for i in group)
            if group[0].count:  # an aggregated warning already says where and how often
                message = f"{side} file: {group[0].message}"
            else:
                where = f" (lines {lines_text(lines)})" if lines else ""
                message = f"{side} file: {count} × {group[0].message}{where}"
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
            f"{lines_text(lines)}, or leave those lines out (`data convert --skip-invalid`)."
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
                    f"tokens: lines {lines_text(counts.over_context)}"
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
    duplicates = find_duplicates(train, validation)
    labels = label_stats(train, validation)
    diversity = diversity_stats(train)
    findings += duplicate_findings(duplicates) + label_findings(labels, train)
    findings += diversity_findings(diversity, train, labels is not None) + content_findings(train, validation)
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
