"""The JSON-lines importers of conversations: ``chat``, ``prompt-completion``, ``instruction`` (Alpaca) and
``text`` (a written-out template). Each turns one parsed object into chat messages or a ``LineError``.
Knows nothing about classification columns, tokenizers or HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tempering.data.formats.records import Collector, LineError
from tempering.data.formats.templates import parse_template
from tempering.data.lines import brief, is_blank, iter_lines, parse_json_line


def text_field(obj: dict, key: str, *, required: bool = True) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise LineError(("missing_field", f"no {key!r} field"))
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise LineError(("field_not_string", f"{key!r} is {type(value).__name__}, not a string"))
    if required and not value.strip():
        raise LineError(("empty_field", f"{key!r} is empty"))
    return value


def _with_system(obj: dict, turns: list[dict]) -> list[dict]:
    system = text_field(obj, "system", required=False)
    return ([{"role": "system", "content": system}] if system and system.strip() else []) + turns


def _from_prompt_completion(obj: dict) -> list[dict]:
    if obj.get("completion") is not None and obj.get("response") is not None:
        raise LineError(
            ("conflicting_fields", "both 'completion' and 'response': keep the one that is the answer")
        )
    answer_key = "response" if obj.get("completion") is None and "response" in obj else "completion"
    prompt, answer = text_field(obj, "prompt"), text_field(obj, answer_key)
    return _with_system(obj, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])


def _from_instruction(obj: dict) -> list[dict]:
    instruction, output = text_field(obj, "instruction"), text_field(obj, "output")
    extra = text_field(obj, "input", required=False)
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return _with_system(obj, [{"role": "user", "content": user}, {"role": "assistant", "content": output}])


def _from_text(obj: dict) -> list[dict]:
    return parse_template(text_field(obj, "text"))


def _from_chat(obj: dict) -> list[dict]:
    if "messages" not in obj:
        raise LineError(("missing_messages", "no 'messages' list"))
    return obj["messages"]


CONVERTERS = {
    "chat": _from_chat,
    "prompt-completion": _from_prompt_completion,
    "instruction": _from_instruction,
    "text": _from_text,
}
USED_KEYS = {
    "chat": {"messages"},
    "prompt-completion": {"prompt", "completion", "response", "system"},
    "instruction": {"instruction", "input", "output", "system"},
    "text": {"text"},
}


def jsonl_records(path: Path, out: Collector) -> Iterator[tuple[int, dict]]:
    """Parsed JSON objects with their line numbers; undecodable lines become issues."""
    for number, raw in iter_lines(path):
        out.lines = number
        if is_blank(raw):
            out.warning(number, "blank_line", "empty line, skipped")
            continue
        obj, problem = parse_json_line(raw)
        if problem is None and not isinstance(obj, dict):
            problem = ("not_object", f"expected a JSON object, got {type(obj).__name__}")
        if problem is not None:
            out.records += 1
            out.error(number, *problem)
            continue
        yield number, obj


def read_jsonl(path: Path, fmt: str, out: Collector) -> None:
    convert = CONVERTERS[fmt]
    for number, obj in jsonl_records(path, out):
        if fmt != "chat":
            for key in sorted(set(obj) - USED_KEYS[fmt]):
                out.warning(
                    number, "ignored_key", f"key {brief(key)} is not part of the {fmt} format; dropped"
                )
        out.add(number, lambda obj=obj: convert(obj))
