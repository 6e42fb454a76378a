"""Validation of chat-completions JSONL files, before any job runs.

Reads the file as a stream, one line at a time (through ``data.lines``, which bounds line length and JSON
nesting), and reports every problem at once, each with its 1-based line number and a stable code (the
tables below are the contract the CLI, the API and the tests rely on). Errors keep every line; a warning
that recurs on more than ``AGGREGATE_AFTER`` lines becomes one warning with a count and the first lines.
With a tokenizer it also counts tokens through the model's chat template, exactly as training will.
Knows nothing about model weights, training or HTTP.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, Field, model_serializer

from tempering.data.lines import (
    FILE_ERROR_CODES,
    LINE_ERROR_CODES,
    brief,
    is_blank,
    iter_lines,
    parse_json_line,
    sniff_file,
)
from tempering.errors import InvalidDataError

# iter_lines and parse_json_line are imported from here by older callers; they live in data.lines.

MIN_EXAMPLES = 10
ROLES = ("system", "user", "assistant")
EXAMPLE_KEYS = {"messages"}
MESSAGE_KEYS = {"role", "content", "weight", "name"}

# code → what it means. Errors block training; warnings do not.
ERROR_CODES = {
    **FILE_ERROR_CODES,
    **LINE_ERROR_CODES,
    "empty_file": "the file holds no examples",
    "not_object": "the line is JSON but not an object",
    "missing_messages": "the example has no 'messages' key",
    "messages_not_list": "'messages' is not a non-empty list",
    "message_not_object": "a message is not a JSON object",
    "missing_role": "a message has no 'role'",
    "unknown_role": "a message's role is not system, user or assistant",
    "unknown_key": "an example or a message has a key Tempering does not know",
    "missing_content": "a message has no 'content'",
    "content_not_string": "a message's content is not a string",
    "empty_content": "a message's content is empty or only whitespace",
    "no_assistant_message": "the example has no assistant message",
    "no_trained_message": "every assistant message has weight 0, so nothing would be learned",
    "invalid_weight": "'weight' is not 0 or 1, or is set on a message that is not the assistant's",
    "too_long": "the example is longer than the model's context",
    "too_few_examples": "the file has fewer examples than fine-tuning needs",
}
WARNING_CODES = {
    "blank_line": "an empty line, skipped",
    "no_system_message": "the example has no system message",
    "duplicate_example": "the example repeats an earlier one exactly",
}
AGGREGATE_AFTER = 10  # a warning on more lines than this is reported once, with a count
SHOWN_LINES = 10  # line numbers an aggregated warning lists


class Issue(BaseModel):
    line: int | None = Field(description="1-based line number; null for a problem of the whole file.")
    code: str
    message: str
    count: int | None = Field(None, description="An aggregated warning only: on how many lines it occurs.")
    lines: list[int] | None = Field(None, description="An aggregated warning only: its first line numbers.")

    @model_serializer(mode="wrap")
    def _without_empty_aggregate(self, handler):
        data = handler(self)
        if self.count is None:  # an issue of one line keeps its three keys
            data.pop("count", None)
            data.pop("lines", None)
        return data


def aggregate_warnings(warnings: list[Issue], described: Mapping[str, str] | None = None) -> list[Issue]:
    """Each warning code on more than ``AGGREGATE_AFTER`` lines → one warning with its count and first
    lines (``described`` gives the words for codes whose messages differ line to line). Ordered by line;
    aggregating an aggregated list again merges, so it can run on combined lists."""
    described = {**WARNING_CODES, **(described or {})}
    by_code: dict[str, list[Issue]] = defaultdict(list)
    for warning in warnings:
        by_code[warning.code].append(warning)
    result: list[Issue] = []
    for code, group in by_code.items():
        total = sum(w.count or 1 for w in group)
        if total <= AGGREGATE_AFTER or (len(group) == 1 and group[0].count):
            result += group
            continue
        lines = sorted(n for w in group for n in (w.lines or [w.line]) if n is not None)
        first = group[0]
        if any(w.count for w in group):  # merging aggregates: only the code's own words fit them all
            what = described.get(code, code)
        elif all(w.message == first.message for w in group):
            what = first.message
        else:
            what = f"{described.get(code, code)}, e.g. line {first.line}: {first.message}"
        shown = ", ".join(map(str, lines[:SHOWN_LINES])) + (", …" if len(lines) > SHOWN_LINES else "")
        result.append(
            Issue(
                line=lines[0] if lines else None,
                code=code,
                count=total,
                lines=lines[:SHOWN_LINES],
                message=f"{what} (on {total} lines: {shown})",
            )
        )
    return sorted(result, key=lambda issue: (issue.line is not None, issue.line or 0))


class WarningTally:
    """Warnings gathered line by line in bounded memory: the first ``AGGREGATE_AFTER + 1`` of each code are
    kept as they are, the rest only counted (a warning on every line of a huge file is one warning with a
    count, never a list as long as the file). ``issues()`` hands ``aggregate_warnings`` what it needs."""

    def __init__(self):
        self.kept: list[Issue] = []
        self.per_code: Counter = Counter()
        self.overflow: Counter = Counter()

    def append(self, issue: Issue) -> None:
        self.per_code[issue.code] += 1
        if self.per_code[issue.code] <= AGGREGATE_AFTER + 1:
            self.kept.append(issue)
        else:
            self.overflow[issue.code] += 1

    def __iadd__(self, issues):
        for issue in issues:
            self.append(issue)
        return self

    def issues(self) -> list[Issue]:
        """The kept warnings, plus one counted entry per code for those only counted."""
        extra = [Issue(line=None, code=code, message=WARNING_CODES.get(code, code), count=n, lines=[])
                 for code, n in self.overflow.items()]
        return self.kept + extra


class ValidationReport(BaseModel):
    path: str
    valid: bool
    errors: list[Issue]
    warnings: list[Issue]
    stats: dict

    def summary(self) -> str:
        return (
            f"{self.path}: {len(self.errors)} error(s), {len(self.warnings)} warning(s) "
            f"in {self.stats.get('lines', 0)} line(s)"
        )


def _keys_text(keys: set[str], shown: int = 5) -> str:
    """One problem however many keys: ``unknown key 'a'``, ``unknown keys 'a', 'b', … (40 in all)``."""
    ordered = sorted(keys)
    names = ", ".join(brief(k) for k in ordered[:shown]) + (
        f", … ({len(ordered)} in all)" if len(ordered) > shown else ""
    )
    return f"unknown key{'s' if len(ordered) > 1 else ''} {names}"


def _check_message(index: int, message, problems: list[tuple[str, str]]) -> None:
    where = f"message {index + 1}"
    if not isinstance(message, dict):
        problems.append(("message_not_object", f"{where} is {type(message).__name__}, not an object"))
        return
    if unknown := set(message) - MESSAGE_KEYS:
        problems.append(
            ("unknown_key", f"{where} has {_keys_text(unknown)} (allowed: {sorted(MESSAGE_KEYS)})")
        )
    role = message.get("role")
    if "role" not in message:
        problems.append(("missing_role", f"{where} has no 'role'"))
    elif role not in ROLES:
        problems.append(("unknown_role", f"{where} has role {brief(role)}; use one of {', '.join(ROLES)}"))
    if "content" not in message:
        problems.append(("missing_content", f"{where} has no 'content'"))
    elif not isinstance(message["content"], str):
        kind = type(message["content"]).__name__
        problems.append(("content_not_string", f"{where} has content of type {kind}, not a string"))
    elif not message["content"].strip():
        problems.append(("empty_content", f"{where} has empty content"))
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            problems.append(("invalid_weight", f"{where}: 'weight' is only allowed on assistant messages"))
        elif isinstance(weight, bool) or weight not in (0, 1):
            problems.append(("invalid_weight", f"{where} has weight {brief(weight)}; use 0 or 1"))


def check_example(obj) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Structural problems of one parsed line: (errors, warnings) as (code, message) pairs."""
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    if not isinstance(obj, dict):
        errors.append(("not_object", f"expected a JSON object, got {type(obj).__name__}"))
        return errors, warnings
    if unknown := set(obj) - EXAMPLE_KEYS:
        errors.append(("unknown_key", f"{_keys_text(unknown)} (an example holds only 'messages')"))
    if "messages" not in obj:
        errors.append(("missing_messages", "no 'messages' list"))
        return errors, warnings
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        errors.append(("messages_not_list", "'messages' must be a non-empty list of messages"))
        return errors, warnings
    for index, message in enumerate(messages):
        _check_message(index, message, errors)
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    assistants = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not assistants:
        errors.append(("no_assistant_message", "no assistant message: there is nothing to learn from"))
    elif all(m.get("weight", 1) == 0 for m in assistants):
        errors.append(("no_trained_message", "every assistant message has weight 0"))
    if "system" not in roles:
        warnings.append(("no_system_message", "no system message"))
    return errors, warnings


def _example_hash(messages: list) -> int:
    """An example's identity for duplicate detection: 64 bits of BLAKE2b (one small int per example in
    memory; a false duplicate needs ~2^32 examples)."""
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(canonical.encode("utf-8"), digest_size=8).digest(), "big")


def distribution_stats(values: Sequence[float]) -> dict:
    """min, median, p95, max and total of ``values`` ({} for none): the one definition of p95."""
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
        "total": sum(ordered),
    }


class _Pass:
    """One pass over a file's lines: the issues and counts gathered so far."""

    def __init__(self, tokenizer, context_length: int | None, on_example):
        self.tokenizer, self.context_length, self.on_example = tokenizer, context_length, on_example
        self.errors: list[Issue] = []
        self.warnings = WarningTally()  # bounded: a warning on every line is counted, not listed
        self.seen: dict[int, int] = {}
        self.roles: Counter = Counter()
        self.tokens = array("l")  # one machine integer per example, not one Python object
        self.trained = array("l")
        self.n_lines = self.n_examples = self.n_valid = 0

    def line(self, number: int, raw: bytes) -> None:
        self.n_lines = number
        if is_blank(raw):
            self.warnings.append(Issue(line=number, code="blank_line", message="empty line, skipped"))
            return
        self.n_examples += 1
        obj, problem = parse_json_line(raw)
        if problem is not None:
            self.errors.append(Issue(line=number, code=problem[0], message=problem[1]))
            return
        line_errors, line_warnings = check_example(obj)
        self.errors += [Issue(line=number, code=c, message=m) for c, m in line_errors]
        self.warnings += [Issue(line=number, code=c, message=m) for c, m in line_warnings]
        if not line_errors and self._counted(number, obj["messages"]):
            self.n_valid += 1
            if self.on_example is not None:
                self.on_example(number, obj["messages"])

    def _counted(self, number: int, messages: list) -> bool:
        """Duplicates, roles and tokens of a structurally valid example; False when it is too long."""
        from tempering.data.encode import encode_chat

        digest = _example_hash(messages)
        if digest in self.seen:
            self.warnings.append(
                Issue(
                    line=number, code="duplicate_example", message=f"same example as line {self.seen[digest]}"
                )
            )
        else:
            self.seen[digest] = number
        for m in messages:
            self.roles[m["role"]] += 1
        if self.tokenizer is None:
            return True
        encoded = encode_chat(self.tokenizer, messages)
        self.tokens.append(len(encoded))
        self.trained.append(encoded.n_trained)
        if self.context_length is not None and len(encoded) > self.context_length:
            self.errors.append(
                Issue(
                    line=number,
                    code="too_long",
                    message=f"{len(encoded)} tokens; the model's context is {self.context_length}",
                )
            )
            return False
        return True

    def report(self, path: Path, min_examples: int) -> ValidationReport:
        errors = self.errors
        if self.n_examples == 0:
            errors.insert(0, Issue(line=None, code="empty_file", message="the file holds no examples"))
        elif self.n_examples < min_examples:
            errors.append(
                Issue(
                    line=None,
                    code="too_few_examples",
                    message=f"{self.n_examples} example(s); fine-tuning needs at least {min_examples}",
                )
            )
        stats = {
            "lines": self.n_lines,
            "examples": self.n_examples,
            "valid_examples": self.n_valid,
            "messages_by_role": dict(self.roles),
        }
        if self.tokenizer is not None:
            stats["tokens_per_example"] = distribution_stats(self.tokens)
            stats["trained_tokens_per_example"] = distribution_stats(self.trained)
            stats["context_length"] = self.context_length
        return ValidationReport(
            path=str(path),
            valid=not errors,
            errors=errors,
            warnings=aggregate_warnings(self.warnings.issues()),
            stats=stats,
        )


def file_error_report(path: str | Path, problem: tuple[str, str], **stats) -> ValidationReport:
    """The report of a file that cannot be read line by line at all: one error, for the whole file."""
    issue = Issue(line=None, code=problem[0], message=problem[1])
    return ValidationReport(
        path=str(path),
        valid=False,
        errors=[issue],
        warnings=[],
        stats={"lines": 0, "examples": 0, "valid_examples": 0, "messages_by_role": {}, **stats},
    )


def validate_file(
    path: str | Path,
    *,
    tokenizer=None,
    context_length: int | None = None,
    min_examples: int = MIN_EXAMPLES,
    on_example=None,
    lines: Iterable[tuple[int, bytes]] | None = None,
) -> ValidationReport:
    """Validate ``path``; with a tokenizer, count tokens and flag examples over ``context_length``.

    ``on_example(line, messages)`` is called for each structurally valid example, so a caller can
    collect them in the same single pass. ``lines`` replaces reading ``path``: (line number, chat JSON)
    pairs converted from another format, so every issue keeps the original file's line numbers. Never
    raises for what the file holds: a binary or UTF-16 file is one error for the whole file.
    """
    path = Path(path)
    if lines is None and (problem := sniff_file(path)):
        return file_error_report(path, problem)
    state = _Pass(tokenizer, context_length, on_example)
    for number, raw in iter_lines(path) if lines is None else lines:
        state.line(number, raw)
    return state.report(path, min_examples)


def load_chat_file(
    path: str | Path, *, tokenizer=None, context_length=None, min_examples: int = MIN_EXAMPLES
) -> tuple[list[list[dict]], ValidationReport]:
    """Validate then return the examples' messages; raises ``InvalidDataError`` holding the report."""
    examples: list[list[dict]] = []
    report = validate_file(
        path,
        tokenizer=tokenizer,
        context_length=context_length,
        min_examples=min_examples,
        on_example=lambda _, m: examples.append(m),
    )
    if not report.valid:
        raise invalid_data(report)
    return examples, report


def invalid_data(report, param: str = "training_file", shown: int = 20) -> InvalidDataError:
    """The error for a report with errors (validation or conversion), naming the file's parameter and the
    first ``shown`` problems, each with its line; it holds the whole report."""
    problems = "; ".join(f"line {i.line}: {i.message} [{i.code}]" if i.line else f"{i.message} [{i.code}]"
                         for i in report.errors[:shown])
    more = f"; and {len(report.errors) - shown} more" if len(report.errors) > shown else ""
    what = param.replace("_", " ")
    return InvalidDataError(f"the {what} is invalid: {report.summary()}; {problems}{more}", report, param=param)
