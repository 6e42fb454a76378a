"""Telling the formats apart: CSV or JSON lines, then the keys of the first JSON objects.

Knows the shapes of the formats (which keys make which format), not how to convert them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tempering.data.formats.records import FORMATS
from tempering.data.validate import iter_lines, parse_json_line
from tempering.errors import InvalidDataError

# Column names tried, in order, when a classification file's columns are not given.
TEXT_COLUMNS = ("text", "sentence", "utterance", "query", "question", "input", "content", "prompt")
LABEL_COLUMNS = ("label", "category", "intent", "class", "target", "labels")


def pick_column(columns, candidates) -> str | None:
    lowered = {c.lower().strip(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return None


def is_csv(path: Path, first: bytes) -> bool:
    return path.suffix.lower() in (".csv", ".tsv") or not first.lstrip().startswith((b"{", b"["))


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


def detect_format(
    path: str | Path, *, text_column: str | None = None, label_column: str | None = None, sample: int = 50
) -> str:
    """The format of ``path``, decided from the first ``sample`` JSON lines (the most common shape wins)."""
    path = Path(path)
    first = next((raw for _, raw in iter_lines(path) if raw.strip()), None)
    if first is not None and is_csv(path, first):
        return "classification"
    seen: Counter = Counter()
    for _, raw in iter_lines(path):
        if not raw.strip():
            continue
        obj, problem = parse_json_line(raw)
        if problem is not None:
            continue
        if isinstance(obj, dict) and (kind := _format_of(obj, text_column, label_column)):
            seen[kind] += 1
        if sum(seen.values()) >= sample:
            break
    if not seen:
        raise InvalidDataError(
            f"{path}: cannot tell the data format (no line looks like any of {', '.join(FORMATS)}); "
            "name it with --format"
        )
    return seen.most_common(1)[0][0]
