"""Telling the formats apart: CSV or JSON lines, then the keys of the first JSON objects.

Knows the shapes of the formats (which keys make which format), not how to convert them. A file whose
format cannot be told is read as chat JSONL, the canonical format, under a file-level ``unknown_format``
error, so each line still gets its own reason."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tempering.data.formats.records import FORMATS
from tempering.data.lines import is_blank, iter_lines, parse_json_line
from tempering.errors import InvalidDataError

MAX_SCANNED = 1000  # lines looked at before giving up on telling the format

# Column names tried, in order, when a classification file's columns are not given.
TEXT_COLUMNS = ("text", "sentence", "utterance", "query", "question", "input", "content", "prompt")
LABEL_COLUMNS = ("label", "category", "intent", "class", "target", "labels")


def pick_column(columns, candidates) -> str | None:
    lowered = {c.lower().strip(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return None


JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def is_csv(path: Path, first: bytes) -> bool:
    """By the name's suffix when it has a known one (an upload stored under a server id has none), else by
    whether the first line opens a JSON value."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv") or suffix in JSON_SUFFIXES:
        return suffix in (".csv", ".tsv")
    return not first.lstrip().startswith((b"{", b"["))


def _format_of(obj: dict, text_column: str | None, label_column: str | None) -> str | None:
    keys = set(obj)
    if "messages" in keys:
        return "chat"
    if "prompt" in keys and keys & {"completion", "response"}:
        return "prompt-completion"
    if "instruction" in keys and "output" in keys:
        return "instruction"
    if (label_column or pick_column(keys, LABEL_COLUMNS)) in keys and (
        text_column or pick_column(keys, TEXT_COLUMNS)
    ) in keys:
        return "classification"
    if "text" in keys:
        return "text"
    return None


def first_content_line(path: Path) -> bytes | None:
    """The first line that is not blank (its first bytes only if it is over the length limit)."""
    return next((raw for _, raw in iter_lines(path) if not is_blank(raw)), None)


def _detect(path: Path, text_column: str | None, label_column: str | None, sample: int) -> str | None:
    first = first_content_line(path)
    if first is not None and is_csv(path, first):
        return "classification"
    seen: Counter = Counter()
    scanned = 0
    for _, raw in iter_lines(path):
        if is_blank(raw):
            continue
        scanned += 1
        obj, problem = parse_json_line(raw)
        if problem is None and isinstance(obj, dict) and (kind := _format_of(obj, text_column, label_column)):
            seen[kind] += 1
        if sum(seen.values()) >= sample or scanned >= MAX_SCANNED:
            break
    return seen.most_common(1)[0][0] if seen else None


def _undetected(path: Path | None = None) -> str:
    where = f"{path}: " if path else ""
    return (
        f"{where}cannot tell the data format (no line looks like any of {', '.join(FORMATS)}); "
        "name it with --format"
    )


def detect_format(
    path: str | Path, *, text_column: str | None = None, label_column: str | None = None, sample: int = 50
) -> str:
    """The format of ``path``, decided from the first ``sample`` JSON lines (the most common shape wins);
    raises ``InvalidDataError`` when no line looks like any format."""
    path = Path(path)
    fmt = _detect(path, text_column, label_column, sample)
    if fmt is None:
        raise InvalidDataError(_undetected(path))
    return fmt


def resolve_format(
    path: Path, format: str | None, text_column: str | None, label_column: str | None
) -> tuple[str, tuple[str, str] | None]:
    """(the format to read ``path`` as, a file-level (code, message) problem or None); never raises. An
    undetectable file is read as chat under ``unknown_format``; an empty one is simply chat (and empty)."""
    if format is not None:
        return format, None
    fmt = _detect(path, text_column, label_column, sample=50)
    if fmt is not None:
        return fmt, None
    if first_content_line(path) is None:
        return "chat", None
    return "chat", ("unknown_format", _undetected() + "; each line below is checked as chat JSONL")
