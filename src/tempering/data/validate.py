"""Validation of chat-completions JSONL files, before any job runs.

Reads the file as a stream, one line at a time, and reports every problem at once, each with its 1-based
line number and a stable code (the table below is the contract the CLI, the API and the tests rely on).
With a tokenizer it also counts tokens through the model's chat template, exactly as training will.
Knows nothing about model weights, training or HTTP.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from tempering.errors import InvalidDataError

MIN_EXAMPLES = 10
ROLES = ("system", "user", "assistant")
EXAMPLE_KEYS = {"messages"}
MESSAGE_KEYS = {"role", "content", "weight", "name"}

# code → what it means. Errors block training; warnings do not.
ERROR_CODES = {
    "not_utf8": "the line is not valid UTF-8",
    "empty_file": "the file holds no examples",
    "invalid_json": "the line is not valid JSON",
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


class Issue(BaseModel):
    line: int | None = Field(description="1-based line number; null for a problem of the whole file.")
    code: str
    message: str


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


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the line ending); a UTF-8 BOM on line 1 is dropped."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield number, raw.rstrip(b"\r\n")


def parse_json_line(raw: bytes) -> tuple[object, tuple[str, str] | None]:
    """(the JSON value of one line, None), or (None, (code, message)) when it is not UTF-8 or not JSON:
    every reader of JSON lines reports these two problems in the same words."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, ("not_utf8", f"not UTF-8 at byte {exc.start}")
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, ("invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})")


def _check_message(index: int, message, problems: list[tuple[str, str]]) -> None:
    where = f"message {index + 1}"
    if not isinstance(message, dict):
        problems.append(("message_not_object", f"{where} is {type(message).__name__}, not an object"))
        return
    for key in sorted(set(message) - MESSAGE_KEYS):
        problems.append(("unknown_key", f"{where} has unknown key {key!r} (allowed: {sorted(MESSAGE_KEYS)})"))
    role = message.get("role")
    if "role" not in message:
        problems.append(("missing_role", f"{where} has no 'role'"))
    elif role not in ROLES:
        problems.append(("unknown_role", f"{where} has role {role!r}; use one of {', '.join(ROLES)}"))
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
            problems.append(("invalid_weight", f"{where} has weight {weight!r}; use 0 or 1"))


def check_example(obj) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Structural problems of one parsed line: (errors, warnings) as (code, message) pairs."""
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    if not isinstance(obj, dict):
        errors.append(("not_object", f"expected a JSON object, got {type(obj).__name__}"))
        return errors, warnings
    for key in sorted(set(obj) - EXAMPLE_KEYS):
        errors.append(("unknown_key", f"unknown key {key!r} (an example holds only 'messages')"))
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


def _example_hash(messages: list) -> str:
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


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
    pairs converted from another format, so every issue keeps the original file's line numbers.
    """
    from tempering.data.encode import encode_chat

    path = Path(path)
    errors: list[Issue] = []
    warnings: list[Issue] = []
    seen: dict[str, int] = {}
    roles: Counter = Counter()
    tokens: list[int] = []
    trained: list[int] = []
    n_lines = n_examples = n_valid = 0
    for number, raw in iter_lines(path) if lines is None else lines:
        n_lines = number
        if not raw.strip():
            warnings.append(Issue(line=number, code="blank_line", message="empty line, skipped"))
            continue
        n_examples += 1
        obj, problem = parse_json_line(raw)
        if problem is not None:
            errors.append(Issue(line=number, code=problem[0], message=problem[1]))
            continue
        line_errors, line_warnings = check_example(obj)
        errors += [Issue(line=number, code=c, message=m) for c, m in line_errors]
        warnings += [Issue(line=number, code=c, message=m) for c, m in line_warnings]
        if line_errors:
            continue
        digest = _example_hash(obj["messages"])
        if digest in seen:
            warnings.append(Issue(line=number, code="duplicate_example",
                                  message=f"same example as line {seen[digest]}"))
        else:
            seen[digest] = number
        for m in obj["messages"]:
            roles[m["role"]] += 1
        if tokenizer is not None:
            encoded = encode_chat(tokenizer, obj["messages"])
            tokens.append(len(encoded))
            trained.append(encoded.n_trained)
            if context_length is not None and len(encoded) > context_length:
                errors.append(Issue(line=number, code="too_long", message=f"{len(encoded)} tokens; the "
                                    f"model's context is {context_length}"))
                continue
        n_valid += 1
        if on_example is not None:
            on_example(number, obj["messages"])
    if n_examples == 0:
        errors.insert(0, Issue(line=None, code="empty_file", message="the file holds no examples"))
    elif n_examples < min_examples:
        errors.append(Issue(line=None, code="too_few_examples",
                            message=f"{n_examples} example(s); fine-tuning needs at least {min_examples}"))
    stats = {
        "lines": n_lines,
        "examples": n_examples,
        "valid_examples": n_valid,
        "messages_by_role": dict(roles),
    }
    if tokenizer is not None:
        stats["tokens_per_example"] = distribution_stats(tokens)
        stats["trained_tokens_per_example"] = distribution_stats(trained)
        stats["context_length"] = context_length
    return ValidationReport(path=str(path), valid=not errors, errors=errors, warnings=warnings, stats=stats)


def load_chat_file(path: str | Path, *, tokenizer=None, context_length=None,
                   min_examples: int = MIN_EXAMPLES) -> tuple[list[list[dict]], ValidationReport]:
    """Validate then return the examples' messages; raises ``InvalidDataError`` holding the report."""
    examples: list[list[dict]] = []
    report = validate_file(path, tokenizer=tokenizer, context_length=context_length,
                           min_examples=min_examples, on_example=lambda _, m: examples.append(m))
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
