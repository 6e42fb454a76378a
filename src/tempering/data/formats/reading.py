"""Reading a whole file of any format: ``read_examples`` (examples and a conversion report),
``load_examples`` (what training wants) and ``validate_any`` (``data.validate`` for any format).

Picks the importer (detected or named), gathers its examples and problems, and adds the file's facts (line
endings, BOM, final newline). Never raises for what a file holds: a binary or UTF-16 file, an undetectable
format or a missing column is an error of the whole file (``line: null``) in the report. Knows nothing
about tokenizers beyond handing one to ``data.validate``."""

from __future__ import annotations

import json
from pathlib import Path

from tempering.data.formats.classification import read_classification_jsonl, read_csv
from tempering.data.formats.detect import first_content_line, is_csv, resolve_format
from tempering.data.formats.jsonl import read_jsonl
from tempering.data.formats.records import (
    FORMAT_WARNING_CODES,
    FORMATS,
    Collector,
    ConversionReport,
    Example,
    FileProblem,
)
from tempering.data.lines import sniff_file
from tempering.data.validate import (
    MIN_EXAMPLES,
    Issue,
    ValidationReport,
    aggregate_warnings,
    file_error_report,
    invalid_data,
    validate_file,
)
from tempering.errors import InvalidConfigError

_CHUNK = 1024 * 1024


def file_facts(path: Path) -> dict:
    """Line endings ("LF", "CRLF", "mixed" or "none"), a UTF-8 BOM, and a final newline: all handled, and
    worth reporting. Read in chunks, so a huge file is never in memory whole."""
    crlf = lf = 0
    first = last = b""
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            crlf += chunk.count(b"\r\n") + (last.endswith(b"\r") and chunk.startswith(b"\n"))
            lf += chunk.count(b"\n")
            first, last = first or chunk[:3], chunk
    lf -= crlf
    endings = "none" if not crlf and not lf else "CRLF" if not lf else "LF" if not crlf else "mixed"
    return {
        "line_endings": endings,
        "bom": first.startswith(b"\xef\xbb\xbf"),
        "final_newline": last.endswith(b"\n") or not last,
    }


def _check_format(format: str | None) -> None:
    if format is not None and format not in FORMATS:
        raise InvalidConfigError(
            f"unknown format {format!r}; use one of {', '.join(FORMATS)}", param="format"
        )


def _convert(path: Path, fmt: str, out: Collector, text_column, label_column) -> dict:
    """Run the importer of ``fmt`` into ``out``; the columns it used, for classification."""
    if fmt != "classification":
        read_jsonl(path, fmt, out)
        return {}
    first = first_content_line(path) or b""
    read = read_csv if is_csv(path, first) else read_classification_jsonl
    try:
        columns = read(path, out, text_column, label_column)
    except FileProblem as exc:
        out.error(None, exc.code, exc.message)
        columns = (text_column, label_column)
    return {"text_column": columns[0], "label_column": columns[1]}


def read_examples(
    path: str | Path,
    format: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
) -> tuple[list[Example], ConversionReport]:
    """Convert every line of ``path``; never raises for what the file holds, which is all in the report.

    ``format`` is one of ``FORMATS`` or None to detect it (an unknown name raises ``InvalidConfigError``).
    Problems of the whole file (binary, UTF-16, no detectable format, a classification column missing)
    are errors with no line.
    """
    path = Path(path)
    _check_format(format)
    out = Collector()
    problem = sniff_file(path)
    fmt, undetected = (
        (format or "chat", None) if problem else resolve_format(path, format, text_column, label_column)
    )
    stats: dict = file_facts(path)
    for found in (problem, undetected):
        if found:
            out.error(None, *found)
    if problem is None:
        stats.update(_convert(path, fmt, out, text_column, label_column))
    if out.records == 0 and problem is None and not any(i.line is None for i in out.errors):
        out.errors.insert(0, Issue(line=None, code="empty_file", message="the file holds no examples"))
    stats.update(lines=out.lines, examples=out.records, converted=len(out.examples))
    warnings = aggregate_warnings(out.warnings, FORMAT_WARNING_CODES)
    report = ConversionReport(
        path=str(path), format=fmt, valid=not out.errors, errors=out.errors, warnings=warnings, stats=stats
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
    converted examples' (token counts, context length, duplicates) are reported together. Never raises for
    what the file holds (only ``InvalidConfigError`` for an unknown ``format`` name).
    """
    path = Path(path)
    _check_format(format)
    if problem := sniff_file(path):
        return file_error_report(path, problem, format=format)
    fmt, undetected = resolve_format(path, format, text_column, label_column)
    if fmt == "chat":
        report = validate_file(
            path, tokenizer=tokenizer, context_length=context_length, min_examples=min_examples
        )
        if undetected:
            report.errors.insert(0, Issue(line=None, code=undetected[0], message=undetected[1]))
            report.valid = False
        report.stats["format"] = fmt
        return report
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
    by_line = lambda issue: (issue.line is not None, issue.line or 0)
    stats = {**inner.stats, **conversion.stats, "format": fmt}
    stats["valid_examples"] = inner.stats["valid_examples"]
    warnings = aggregate_warnings(conversion.warnings + inner.warnings, FORMAT_WARNING_CODES)
    return ValidationReport(
        path=str(path),
        valid=not errors,
        errors=sorted(errors, key=by_line),
        warnings=warnings,
        stats=stats,
    )
