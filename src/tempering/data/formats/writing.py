"""Writing converted examples: canonical chat JSONL or classification rows, atomically (temp file, rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from tempering.data.formats.records import Example
from tempering.errors import InvalidDataError

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for example in examples:
            fh.write(json.dumps(example_record(example, to), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
