"""The classification importer: a text and a label per row, from CSV/TSV or JSON lines, each row becoming a
user turn and its label as the answer. Knows nothing about tokenizers or HTTP.

CSV is read as RFC 4180 (the ``excel`` dialect: quoted fields, doubled quotes inside them, fields that span
lines); only the delimiter is chosen, from the header line (comma unless tab, semicolon or bar is more
common there; always tab for ``.tsv``). Rows stream one physical line at a time through ``data.lines``, so
a line over its length limit is an error naming it, never a whole file in memory."""

from __future__ import annotations

import csv
import itertools
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tempering.data.formats.detect import LABEL_COLUMNS, TEXT_COLUMNS, pick_column
from tempering.data.formats.jsonl import jsonl_records
from tempering.data.formats.records import Collector, FileProblem, LineError
from tempering.data.lines import MAX_LINE_BYTES, UTF8_BOM, LongLine, brief, raw_lines

DELIMITERS = ",\t;|"
_SURROGATE = re.compile(r"[\udc80-\udcff]")
_LONE_CR = re.compile(r"(?<=\r)(?!\n)(?!$)")
TOO_LONG = f"the line is longer than {MAX_LINE_BYTES:,} bytes (the limit): shorten or split the example"


def _classification_example(text, label, text_column: str, label_column: str) -> tuple[list[dict], str]:
    if text is None:
        raise LineError(("missing_field", f"no {text_column!r} field"))
    if label is None:
        raise LineError(("missing_field", f"no {label_column!r} field"))
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        label = str(label)
    for key, value in ((text_column, text), (label_column, label)):
        if not isinstance(value, str):
            raise LineError(("field_not_string", f"{key!r} is {type(value).__name__}, not a string"))
        if not value.strip():
            raise LineError(("empty_field", f"{key!r} is empty"))
    label = label.strip()
    return [{"role": "user", "content": text}, {"role": "assistant", "content": label}], label


def _resolve_columns(columns, text_column, label_column) -> tuple[str, str]:
    """The text and label column names, or a ``FileProblem`` naming the option that fixes it."""
    text = text_column or pick_column(columns, TEXT_COLUMNS)
    label = label_column or pick_column(columns, LABEL_COLUMNS)
    names = sorted(columns)
    among = ", ".join(brief(c, 40) for c in names[:20]) + (
        f", … ({len(names)} in all)" if len(names) > 20 else ""
    )
    for given, role, option in ((text, "text", "--text-column"), (label, "label", "--label-column")):
        if given is None or given not in columns:
            what = f"no column {brief(given)}" if given else f"no {role} column found"
            raise FileProblem("missing_column", f"{what} among [{among}]; name it with {option}")
    return text, label


def read_classification_jsonl(path: Path, out: Collector, text_column, label_column) -> tuple[str, str]:
    columns: tuple[str, str] | None = None
    for number, obj in jsonl_records(path, out):
        if columns is None:
            columns = _resolve_columns(set(obj), text_column, label_column)
        t, lab = columns
        out.add(
            number, lambda obj=obj, t=t, lab=lab: _classification_example(obj.get(t), obj.get(lab), t, lab)
        )
    return columns or (text_column or "text", label_column or "label")


def _text_lines(path: Path, too_long: set[int]) -> Iterator[str]:
    """Physical lines decoded, endings kept (as csv wants). Invalid UTF-8 stays as lone surrogates, reported
    per row; a line over the length limit becomes an empty line and its number goes into ``too_long``."""
    with path.open("rb") as fh:
        for number, raw in enumerate(raw_lines(fh), start=1):
            if isinstance(raw, LongLine):
                too_long.add(number)
                yield "\n"
                continue
            if number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[3:]
            text = raw.decode("utf-8", errors="surrogateescape")
            if "\r" in text.rstrip("\r\n"):  # lone CRs end lines too (old Mac exports); csv needs them apart
                yield from _LONE_CR.split(text)
            else:
                yield text


def _delimiter(path: Path, header_line: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    counts = Counter({d: header_line.count(d) for d in DELIMITERS})
    best, n = counts.most_common(1)[0]
    return best if n else ","


def _rows(reader, out: Collector) -> Iterator[tuple[int, list[str] | None]]:
    """(first line of the row, its fields), or (line, None) after reporting a row csv cannot parse."""
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            out.records += 1
            out.error(start, "invalid_csv", f"not valid CSV: {exc}")
            row = None
        number, start = start, reader.line_num + 1
        out.lines = reader.line_num
        yield number, row


def _row_problem(row: list[str], width: int) -> tuple[str, str] | None:
    for cell in row:
        if match := _SURROGATE.search(cell):
            return "not_utf8", f"the row is not valid UTF-8 (byte 0x{ord(match.group()) - 0xDC00:02x})"
        if "\x00" in cell:
            return "nul_byte", "the row holds a NUL byte"
    if len(row) != width:
        return "wrong_column_count", (
            f"{len(row)} field(s); the header has {width} (quote fields that hold the delimiter)"
        )
    return None


def read_csv(path: Path, out: Collector, text_column, label_column) -> tuple[str, str]:
    too_long: set[int] = set()
    lines = _text_lines(path, too_long)
    first = next(lines, None)
    if first is None:
        return text_column or "text", label_column or "label"
    reader = csv.reader(itertools.chain([first], lines), csv.excel, delimiter=_delimiter(path, first))
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise FileProblem("invalid_csv", f"the header line is not valid CSV: {exc}") from exc
    t, lab = _resolve_columns(header, text_column, label_column)
    for name in (t, lab):
        if header.count(name) > 1:
            raise FileProblem("duplicate_column", f"the header names the column {brief(name)} twice")
    ti, li = header.index(t), header.index(lab)
    for number, row in _rows(reader, out):
        if row is None:
            continue
        if number in too_long:
            too_long.discard(number)
            out.records += 1
            out.error(number, "line_too_long", TOO_LONG)
        elif not any(cell.strip() for cell in row):
            out.warning(number, "blank_line", "empty row, skipped")
        elif problem := _row_problem(row, len(header)):
            out.records += 1
            out.error(number, *problem)
        else:
            out.add(number, lambda row=row: _classification_example(row[ti], row[li], t, lab))
    for number in sorted(too_long):  # over-long lines inside a quoted field that spans lines
        out.records += 1
        out.error(number, "line_too_long", TOO_LONG)
    return t, lab
