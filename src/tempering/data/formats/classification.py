"""The classification importer: a text and a label per row, from CSV/TSV or JSON lines, each row becoming a
user turn and its label as the answer. Knows nothing about tokenizers or HTTP."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

from tempering.data.formats.detect import LABEL_COLUMNS, TEXT_COLUMNS, pick_column
from tempering.data.formats.jsonl import jsonl_records
from tempering.data.formats.records import Collector, LineError
from tempering.errors import InvalidDataError


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


def _resolve_columns(columns, text_column, label_column, path: Path) -> tuple[str, str]:
    text = text_column or pick_column(columns, TEXT_COLUMNS)
    label = label_column or pick_column(columns, LABEL_COLUMNS)
    for given, role, option in ((text, "text", "--text-column"), (label, "label", "--label-column")):
        if given is None or given not in columns:
            what = f"no column {given!r}" if given else f"no {role} column found"
            raise InvalidDataError(f"{path}: {what} among {sorted(columns)}; name it with {option}")
    return text, label


def read_classification_jsonl(path: Path, out: Collector, text_column, label_column) -> tuple[str, str]:
    columns: tuple[str, str] | None = None
    for number, obj in jsonl_records(path, out):
        if columns is None:
            columns = _resolve_columns(set(obj), text_column, label_column, path)
        t, lab = columns
        out.add(number, lambda obj=obj: _classification_example(obj.get(t), obj.get(lab), t, lab))
    return columns or (text_column or "text", label_column or "label")


def _decoded_lines(path: Path) -> Iterator[str]:
    """Text lines (endings kept, as csv wants); invalid UTF-8 stays as lone surrogates, reported per row."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return iter(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""))


_SURROGATE = re.compile(r"[\udc80-\udcff]")


def read_csv(path: Path, out: Collector, text_column, label_column) -> tuple[str, str]:
    lines = _decoded_lines(path)
    sample = "".join(line for _, line in zip(range(20), lines))
    lines = _decoded_lines(path)
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",\t;|") if sample.strip() else csv.excel
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(lines, dialect)
    header = next(reader, None)
    if header is None:
        return text_column or "text", label_column or "label"
    header = [h.strip() for h in header]
    t, lab = _resolve_columns(header, text_column, label_column, path)
    ti, li = header.index(t), header.index(lab)
    start = reader.line_num + 1
    for row in reader:
        number, start = start, reader.line_num + 1
        out.lines = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            out.warning(number, "blank_line", "empty row, skipped")
            continue
        if any(_SURROGATE.search(cell) for cell in row):
            out.records += 1
            out.error(number, "not_utf8", "the row is not valid UTF-8")
            continue
        if len(row) != len(header):
            out.records += 1
            out.error(
                number,
                "wrong_column_count",
                f"{len(row)} field(s); the header has {len(header)} (quote fields that hold the delimiter)",
            )
            continue
        out.add(number, lambda row=row: _classification_example(row[ti], row[li], t, lab))
    return t, lab
