"""Reading a whole file of any format: ``read_examples`` (examples and a conversion report),
``load_examples`` (what training wants) and ``validate_any`` (``data.validate`` for any format).

Picks the importer (detected or named), gathers its examples and problems, and adds the file's facts (line
endings, BOM, final newline). Knows nothing about tokenizers beyond handing one to ``data.validate``."""

from __future__ import annotations

import json
from pathlib import Path

from tempering.data.formats.classification import read_classification_jsonl, read_csv
from tempering.data.formats.detect import detect_format, is_csv
from tempering.data.formats.jsonl import read_jsonl
from tempering.data.formats.records import FORMATS, Collector, ConversionReport, Example
from tempering.data.validate import (
    MIN_EXAMPLES,
    Issue,
    ValidationReport,
    invalid_data,
    iter_lines,
    validate_file,
)
from tempering.errors import InvalidConfigError


def file_facts(path: Path) -> dict:
    """Line endings ("LF", "CRLF", "mixed" or "none"), a UTF-8 BOM, and a final newline: all handled, and
    worth reporting."""
    data = path.read_bytes()
    crlf = data.count(b"\r\n")
    lf = data.count(b"\n") - crlf
    endings = "none" if not crlf and not lf else "CRLF" if not lf else "LF" if not crlf else "mixed"
    return {
        "line_endings": endings,
        "bom": data.startswith(b"\xef\xbb\xbf"),
        "final_newline": data.endswith(b"\n") or not data,
    }


def read_examples(
    path: str | Path,
    format: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
) -> tuple[list[Example], ConversionReport]:
    """Convert every line of ``path``; never raises for bad lines, which are listed in the report.

    ``format`` is one of ``FORMATS`` or None to detect it. Raises ``InvalidDataError`` only when the file
    as a whole cannot be read as that format (no detectable format, a classification column missing).
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise InvalidConfigError(
            f"unknown format {format!r}; use one of {', '.join(FORMATS)}", param="format"
        )
    fmt = format or detect_format(path, text_column=text_column, label_column=label_column)
    out = Collector()
    stats: dict = file_facts(path)
    if fmt == "classification":
        first = next((raw for _, raw in iter_lines(path) if raw.strip()), b"")
        if is_csv(path, first):
            columns = read_csv(path, out, text_column, label_column)
        else:
            columns = read_classification_jsonl(path, out, text_column, label_column)
        stats["text_column"], stats["label_column"] = columns
    else:
        read_jsonl(path, fmt, out)
    if out.records == 0:
        out.errors.insert(0, Issue(line=None, code="empty_file", message="the file holds no examples"))
    stats.update(lines=out.lines, examples=out.records, converted=len(out.examples))
    report = ConversionReport(
        path=str(path),
        format=fmt,
        valid=not out.errors,
        errors=out.errors,
        warnings=out.warnings,
        stats=stats,
    )
    return out.examples, report


def load_examples(
    path: str | Path,
    format: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    *,
    skip_invalid: bool = False,
) -> tuple[list[list[dict]], list[str] | None, ConversionReport]:
    """Read any supported format → (chat message lists, class labels or None, report).

    Labels are returned for the classification format only (one per example, in order). Raises
    ``InvalidDataError`` holding the report when any line fails to convert, naming the first one, unless
    ``skip_invalid`` (then the bad lines are left out and stay listed in the report's errors).
    """
    examples, report = read_examples(path, format, text_column=text_column, label_column=label_column)
    if not examples or (not report.valid and not skip_invalid):
        raise invalid_data(report)
    labels = [e.label for e in examples] if report.format == "classification" else None
    return [e.messages for e in examples], labels, report


def validate_any(
    path: str | Path,
    format: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    tokenizer=None,
    context_length: int | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> ValidationReport:
    """``data.validate.validate_file`` for any supported format: converts first, keeps the original lines.

    A chat file is validated as it is; any other is converted, and the conversion's problems and the
    converted examples' (token counts, context length, duplicates) are reported together.
    """
    fmt = format or detect_format(path, text_column=text_column, label_column=label_column)
    if fmt == "chat":
        return validate_file(
            path, tokenizer=tokenizer, context_length=context_length, min_examples=min_examples
        )
    examples, conversion = read_examples(path, fmt, text_column=text_column, label_column=label_column)
    lines = [(e.line, json.dumps({"messages": e.messages}).encode("utf-8")) for e in examples]
    inner = validate_file(
        path, tokenizer=tokenizer, context_length=context_length, min_examples=0, lines=lines
    )
    errors = conversion.errors + [i for i in inner.errors if i.code != "empty_file"]
    n_examples = conversion.stats["examples"]
    if 0 < n_examples < min_examples:
        errors.append(
            Issue(
                line=None,
                code="too_few_examples",
                message=f"{n_examples} example(s); fine-tuning needs at least {min_examples}",
            )
        )
    by_line = lambda issue: (issue.line is not None, issue.line or 0)  # noqa: E731
    stats = {**inner.stats, **conversion.stats, "format": fmt}
    stats["valid_examples"] = inner.stats["valid_examples"]
    return ValidationReport(
        path=str(path),
        valid=not errors,
        errors=sorted(errors, key=by_line),
        warnings=sorted(conversion.warnings + inner.warnings, key=by_line),
        stats=stats,
    )
