"""Importers: every common shape of fine-tuning data in, canonical chat examples out.

Owns the formats (``chat``, ``prompt-completion``, ``text`` with a Phi-3 or ChatML template written out,
``instruction`` (Alpaca), ``classification`` CSV or JSONL), telling them apart, and converting each line
into ``{"messages": [...]}``. Like ``data.validate``, it reads every line, keeps going past bad ones, and
reports each problem with its 1-based line number and a stable code (``FORMAT_ERROR_CODES`` below plus the
structural codes of ``data.validate``). CRLF or LF, a UTF-8 BOM and a missing final newline are all fine.
Knows nothing about tokenizers, model weights, training or HTTP.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel

from tempering.data.validate import (
    MIN_EXAMPLES,
    Issue,
    ValidationReport,
    check_example,
    invalid_data,
    iter_lines,
    parse_json_line,
    validate_file,
)
from tempering.errors import InvalidConfigError, InvalidDataError

Format = Literal["chat", "prompt-completion", "text", "instruction", "classification"]
FORMATS: tuple[str, ...] = get_args(Format)

# Column names tried, in order, when a classification file's columns are not given.
TEXT_COLUMNS = ("text", "sentence", "utterance", "query", "question", "input", "content", "prompt")
LABEL_COLUMNS = ("label", "category", "intent", "class", "target", "labels")

# code → what it means (on top of data.validate's codes, which converted examples are checked against).
FORMAT_ERROR_CODES = {
    "missing_field": "the line lacks a field its format needs",
    "field_not_string": "a field that holds text is not a string",
    "empty_field": "a field that holds text is empty or only whitespace",
    "no_template": "a text line holds no Phi-3 or ChatML chat template to parse",
    "text_outside_turns": "a templated text line has text outside its turns",
    "missing_column": "the classification file has no such column",
    "wrong_column_count": "a CSV row has a different number of fields from the header",
}
FORMAT_WARNING_CODES = {
    "ignored_key": "the line has a key this format does not use; it is dropped",
}


@dataclass(frozen=True)
class Example:
    """One converted example: where it came from, its chat messages, and its class label if it has one."""

    line: int
    messages: list[dict]
    label: str | None = None


class ConversionReport(BaseModel):
    path: str
    format: str
    valid: bool
    errors: list[Issue]
    warnings: list[Issue]
    stats: dict

    def summary(self) -> str:
        return (
            f"{self.path} ({self.format}): {self.stats.get('converted', 0)} of "
            f"{self.stats.get('examples', 0)} example(s) converted, {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
        )


class _LineError(Exception):
    """A problem that stops one line from converting: (code, message) pairs."""

    def __init__(self, *problems: tuple[str, str]):
        super().__init__(problems[0][1])
        self.problems = list(problems)


# ---------------------------------------------------------------- format detection


def _is_csv(path: Path, first: bytes) -> bool:
    return path.suffix.lower() in (".csv", ".tsv") or not first.lstrip().startswith((b"{", b"["))


def _format_of(obj: dict, text_column: str | None, label_column: str | None) -> str | None:
    keys = set(obj)
    if "messages" in keys:
        return "chat"
    if "prompt" in keys and keys & {"completion", "response"}:
        return "prompt-completion"
    if "instruction" in keys and "output" in keys:
        return "instruction"
    if (label_column or _pick_column(keys, LABEL_COLUMNS)) in keys and (
        text_column or _pick_column(keys, TEXT_COLUMNS)
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
    if first is not None and _is_csv(path, first):
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


def _pick_column(columns, candidates) -> str | None:
    lowered = {c.lower().strip(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return None


# ---------------------------------------------------------------- per-format line converters


def _text_field(obj: dict, key: str, *, required: bool = True) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise _LineError(("missing_field", f"no {key!r} field"))
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise _LineError(("field_not_string", f"{key!r} is {type(value).__name__}, not a string"))
    if required and not value.strip():
        raise _LineError(("empty_field", f"{key!r} is empty"))
    return value


def _with_system(obj: dict, turns: list[dict]) -> list[dict]:
    system = _text_field(obj, "system", required=False)
    return ([{"role": "system", "content": system}] if system and system.strip() else []) + turns


def _from_prompt_completion(obj: dict) -> list[dict]:
    answer_key = "completion" if "completion" in obj else "response"
    prompt, answer = _text_field(obj, "prompt"), _text_field(obj, answer_key)
    return _with_system(obj, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])


def _from_instruction(obj: dict) -> list[dict]:
    instruction, output = _text_field(obj, "instruction"), _text_field(obj, "output")
    extra = _text_field(obj, "input", required=False)
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return _with_system(obj, [{"role": "user", "content": user}, {"role": "assistant", "content": output}])


_PHI3_TURN = re.compile(
    r"<\|(system|user|assistant)\|>(.*?)(?:<\|end\|>|(?=<\|(?:system|user|assistant)\|>)|\Z)", re.DOTALL
)
_CHATML_TURN = re.compile(r"<\|im_start\|>([^\n<]*)\n?(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.DOTALL)
# Markers a written-out template may carry around its turns; they hold no content.
_NOISE = re.compile(r"<s>|</s>|<\|endoftext\|>|<\|end\|>|<\|im_end\|>")


def parse_template(text: str) -> list[dict]:
    """A Phi-3 (``<|user|>…<|end|>``) or ChatML (``<|im_start|>user…<|im_end|>``) text → chat messages."""
    if "<|im_start|>" in text:
        pattern, template = _CHATML_TURN, "ChatML"
    elif _PHI3_TURN.search(text):
        pattern, template = _PHI3_TURN, "Phi-3"
    else:
        raise _LineError(
            (
                "no_template",
                ("the text holds no Phi-3 (<|user|> … <|end|>) or ChatML "
                 "(<|im_start|>user … <|im_end|>) chat template"),
            )
        )
    messages, problems, outside = [], [], []
    position = 0
    for match in pattern.finditer(text):
        outside.append(text[position : match.start()])
        position = match.end()
        role = match.group(1).strip()
        if role not in ("system", "user", "assistant"):
            problems.append(
                ("unknown_role", f"{template} turn with role {role!r}; use system, user or assistant")
            )
            continue
        messages.append({"role": role, "content": match.group(2).strip()})
    outside.append(text[position:])
    stray = _NOISE.sub("", "".join(outside)).strip()
    if stray:
        problems.append(("text_outside_turns", f"text outside the {template} turns: {stray[:60]!r}"))
    if problems:
        raise _LineError(*problems)
    return messages


def _from_text(obj: dict) -> list[dict]:
    return parse_template(_text_field(obj, "text"))


def _from_chat(obj: dict) -> list[dict]:
    if "messages" not in obj:
        raise _LineError(("missing_messages", "no 'messages' list"))
    return obj["messages"]


_CONVERTERS = {
    "chat": _from_chat,
    "prompt-completion": _from_prompt_completion,
    "instruction": _from_instruction,
    "text": _from_text,
}
_USED_KEYS = {
    "chat": {"messages"},
    "prompt-completion": {"prompt", "completion", "response", "system"},
    "instruction": {"instruction", "input", "output", "system"},
    "text": {"text"},
}


def _classification_example(text, label, text_column: str, label_column: str) -> tuple[list[dict], str]:
    if text is None:
        raise _LineError(("missing_field", f"no {text_column!r} field"))
    if label is None:
        raise _LineError(("missing_field", f"no {label_column!r} field"))
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        label = str(label)
    for key, value in ((text_column, text), (label_column, label)):
        if not isinstance(value, str):
            raise _LineError(("field_not_string", f"{key!r} is {type(value).__name__}, not a string"))
        if not value.strip():
            raise _LineError(("empty_field", f"{key!r} is empty"))
    label = label.strip()
    return [{"role": "user", "content": text}, {"role": "assistant", "content": label}], label


# ---------------------------------------------------------------- reading whole files


class _Collector:
    """Gathers examples, issues and counts while a file is read."""

    def __init__(self):
        self.examples: list[Example] = []
        self.errors: list[Issue] = []
        self.warnings: list[Issue] = []
        self.lines = self.records = 0

    def error(self, line: int | None, code: str, message: str) -> None:
        self.errors.append(Issue(line=line, code=code, message=message))

    def add(self, line: int, convert, label_of=None) -> None:
        """Run ``convert()`` (→ messages or (messages, label)) and check the result like chat data."""
        self.records += 1
        try:
            result = convert()
        except _LineError as exc:
            for code, message in exc.problems:
                self.error(line, code, message)
            return
        messages, label = result if isinstance(result, tuple) else (result, None)
        errors, _ = check_example({"messages": messages})
        if errors:
            for code, message in errors:
                self.error(line, code, message)
            return
        self.examples.append(Example(line=line, messages=messages, label=label))


def _jsonl_records(path: Path, out: _Collector) -> Iterator[tuple[int, dict]]:
    """Parsed JSON objects with their line numbers; undecodable lines become issues."""
    for number, raw in iter_lines(path):
        out.lines = number
        if not raw.strip():
            out.warnings.append(Issue(line=number, code="blank_line", message="empty line, skipped"))
            continue
        obj, problem = parse_json_line(raw)
        if problem is None and not isinstance(obj, dict):
            problem = ("not_object", f"expected a JSON object, got {type(obj).__name__}")
        if problem is not None:
            out.records += 1
            out.error(number, *problem)
            continue
        yield number, obj


def _read_jsonl(path: Path, fmt: str, out: _Collector) -> None:
    convert = _CONVERTERS[fmt]
    for number, obj in _jsonl_records(path, out):
        if fmt != "chat":
            for key in sorted(set(obj) - _USED_KEYS[fmt]):
                out.warnings.append(
                    Issue(
                        line=number,
                        code="ignored_key",
                        message=f"key {key!r} is not part of the {fmt} format; dropped",
                    )
                )
        out.add(number, lambda obj=obj: convert(obj))


def _resolve_columns(columns, text_column, label_column, path: Path) -> tuple[str, str]:
    text = text_column or _pick_column(columns, TEXT_COLUMNS)
    label = label_column or _pick_column(columns, LABEL_COLUMNS)
    for given, role, option in ((text, "text", "--text-column"), (label, "label", "--label-column")):
        if given is None or given not in columns:
            what = f"no column {given!r}" if given else f"no {role} column found"
            raise InvalidDataError(f"{path}: {what} among {sorted(columns)}; name it with {option}")
    return text, label


def _read_classification_jsonl(path: Path, out: _Collector, text_column, label_column) -> tuple[str, str]:
    columns: tuple[str, str] | None = None
    for number, obj in _jsonl_records(path, out):
        if columns is None:
            columns = _resolve_columns(set(obj), text_column, label_column, path)
        t, lab = columns
        out.add(number, lambda obj=obj, t=t, lab=lab: _classification_example(obj.get(t), obj.get(lab), t, lab))
    return columns or (text_column or "text", label_column or "label")


def _decoded_lines(path: Path) -> Iterator[str]:
    """Text lines (endings kept, as csv wants); invalid UTF-8 stays as lone surrogates, reported per row."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return iter(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""))


_SURROGATE = re.compile(r"[\udc80-\udcff]")


def _read_csv(path: Path, out: _Collector, text_column, label_column) -> tuple[str, str]:
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
            out.warnings.append(Issue(line=number, code="blank_line", message="empty row, skipped"))
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
    out = _Collector()
    stats: dict = file_facts(path)
    if fmt == "classification":
        first = next((raw for _, raw in iter_lines(path) if raw.strip()), b"")
        if _is_csv(path, first):
            columns = _read_csv(path, out, text_column, label_column)
        else:
            columns = _read_classification_jsonl(path, out, text_column, label_column)
        stats["text_column"], stats["label_column"] = columns
    else:
        _read_jsonl(path, fmt, out)
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


# ---------------------------------------------------------------- writing


OutputFormat = Literal["chat", "classification"]


def example_record(example: Example, to: str = "chat") -> dict:
    """The JSON object written for one example: ``{"messages"}``, or ``{"text", "label"}`` for classification.

    Classification output needs a single user turn; the label is the example's label, else its answer.
    """
    if to == "chat":
        return {"messages": example.messages}
    turns = [m for m in example.messages if m["role"] != "system"]
    if len(turns) != 2 or turns[0]["role"] != "user":
        raise InvalidDataError(
            f"line {example.line}: only single-turn examples (one user message and its "
            "answer) can be written as classification rows"
        )
    return {"text": turns[0]["content"], "label": example.label or turns[1]["content"].strip()}


def write_jsonl(examples: list[Example], path: str | Path, to: str = "chat") -> Path:
    """Write examples as JSONL (LF, UTF-8, one object a line) through a temp file, then rename."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for example in examples:
            fh.write(json.dumps(example_record(example, to), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


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
    by_line = lambda issue: (issue.line is not None, issue.line or 0)
    stats = {**inner.stats, **conversion.stats, "format": fmt}
    stats["valid_examples"] = inner.stats["valid_examples"]
    return ValidationReport(
        path=str(path),
        valid=not errors,
        errors=sorted(errors, key=by_line),
        warnings=sorted(conversion.warnings + inner.warnings, key=by_line),
        stats=stats,
    )
