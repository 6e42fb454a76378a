"""Reading data files safely: a file's bytes → numbered lines, one line → a JSON value, or a problem.

Owns the limits that keep a broken or hostile file from taking a reader down, and the words for them.
Every reader of data (``data.validate`` and the importers of ``data.formats``, so also the report, split
and convert) goes through here, so a problem reads the same wherever it is found:

- a line longer than ``MAX_LINE_BYTES`` is one error naming the line; it is skipped in chunks, never held
  whole in memory;
- JSON nested deeper than ``MAX_DEPTH`` levels is an error found before the parser recurses into it;
- JSON that Python parses but other readers would not (NaN, Infinity, an integer too long to convert, the
  same key twice, a lone surrogate escape) is an error, not an exception or a silent choice;
- a file that starts with a UTF-16/UTF-32 byte order mark, or holds NUL bytes in its first
  ``SNIFF_BYTES``, is one error for the whole file instead of one per line.

Knows nothing about chat examples, formats, tokenizers or HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# A 128k-token context is about 0.5 MB of text; JSON escaping can triple it. 8 MiB leaves room for the
# longest context any catalog model has while keeping one line's worth of memory small.
MAX_LINE_BYTES = 8 * 1024 * 1024
# A chat example is 4 levels deep ({"messages": [{"content": …}]}); no real data nests 64 levels.
MAX_DEPTH = 64
SNIFF_BYTES = 8192
_SKIP_CHUNK = 1024 * 1024
_PREVIEW = 60
UTF8_BOM = b"\xef\xbb\xbf"

# code → what it means: the line- and file-level problems found here.
LINE_ERROR_CODES = {
    "not_utf8": "the line is not valid UTF-8 (the message gives the byte offset within the line)",
    "invalid_json": "the line is not valid JSON (NaN, Infinity and integers over 4300 digits included)",
    "line_too_long": f"the line is longer than {MAX_LINE_BYTES:,} bytes",
    "too_deep": f"the line's JSON is nested more than {MAX_DEPTH} levels deep",
    "duplicate_key": "a JSON object has the same key twice, so readers disagree on its value",
    "invalid_unicode": "a string holds a lone surrogate escape (\\ud800-\\udfff), which is not text",
}
FILE_ERROR_CODES = {
    "unsupported_encoding": "the file is UTF-16 or UTF-32 (it starts with that byte order mark); save it as UTF-8",
    "binary_file": f"the file holds NUL bytes in its first {SNIFF_BYTES:,} bytes: it is not UTF-8 text",
}


class LongLine(bytes):
    """Stands in for a line over ``MAX_LINE_BYTES``: its first bytes only (enough to tell ``{`` from a CSV
    header); the rest was skipped unread. ``parse_json_line`` turns it into a ``line_too_long`` problem."""


def brief(value, limit: int = _PREVIEW) -> str:
    """``repr(value)`` cut to ``limit`` characters: data quoted in a message never makes the message huge."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]  # repr of a cut string, not a cut of a huge repr
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def raw_lines(fh: BinaryIO) -> Iterator[bytes]:
    """Physical lines with their endings; a line over ``MAX_LINE_BYTES`` comes as a ``LongLine``."""
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            head = LongLine(raw[:_PREVIEW])
            del raw
            while (chunk := fh.readline(_SKIP_CHUNK)) and not chunk.endswith(b"\n"):
                pass
            yield head
        else:
            yield raw


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the line ending); a UTF-8 BOM on line 1 is dropped."""
    with Path(path).open("rb") as fh:
        for number, raw in enumerate(raw_lines(fh), start=1):
            if isinstance(raw, LongLine):
                yield number, raw
                continue
            if number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[3:]
            yield number, raw.rstrip(b"\r\n")


def is_blank(raw: bytes) -> bool:
    return not isinstance(raw, LongLine) and not raw.strip()


def sniff_file(path: Path) -> tuple[str, str] | None:
    """(code, message) when the whole file is unreadable as UTF-8 text, else None."""
    with Path(path).open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    for bom, name in (
        (b"\xff\xfe\x00\x00", "UTF-32"),
        (b"\x00\x00\xfe\xff", "UTF-32"),
        (b"\xff\xfe", "UTF-16"),
        (b"\xfe\xff", "UTF-16"),
    ):
        if head.startswith(bom):
            return "unsupported_encoding", (
                f"the file is {name} (it starts with a {name} byte order mark); save it as UTF-8"
            )
    nul = head.find(b"\x00")
    if nul >= 0:
        return "binary_file", (
            f"the file holds NUL bytes (the first at byte {nul}): it is binary, or UTF-16/32 without a byte "
            "order mark, not UTF-8 text"
        )
    return None


# A JSON string (skipped whole, so brackets inside text do not count) or one structural bracket.
_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def nesting_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests deeper than ``limit``: decided by a flat scan, before any parser
    recurses, and at once for the common line with few brackets."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _STRUCTURE.finditer(text):
        char = match.group()[0]
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


class _Rejected(ValueError):
    """JSON that Python's parser accepts but that is not portable data: (code, message)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _reject_constant(name: str):
    raise _Rejected("invalid_json", f"invalid JSON: {name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Rejected("duplicate_key", f"the key {brief(key)} appears twice in one object")
            seen.add(key)
    return result


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(value) -> bool:
    """Depth is already bounded by ``MAX_DEPTH``, so the recursion is too."""
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def parse_json_line(raw: bytes) -> tuple[object, tuple[str, str] | None]:
    """(the JSON value of one line, None), or (None, (code, message)) for any line that is not portable
    JSON text; never raises. Codes: ``LINE_ERROR_CODES``."""
    if isinstance(raw, LongLine):
        return None, (
            "line_too_long",
            f"the line is longer than {MAX_LINE_BYTES:,} bytes (the limit): shorten or split the example",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        return None, (
            "not_utf8",
            f"not UTF-8 at byte {exc.start} of the line (0x{bad}): save the file as UTF-8",
        )
    if nesting_exceeds(text):
        return None, ("too_deep", f"the JSON is nested more than {MAX_DEPTH} levels deep")
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        hint = "; the file ends lines with a bare CR (old Mac): save it with LF" if "\r" in text else ""
        return None, ("invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno}){hint}")
    except _Rejected as exc:
        return None, (exc.code, exc.message)
    except RecursionError:
        return None, ("too_deep", "the JSON is nested too deeply to parse")
    except MemoryError:
        return None, ("line_too_long", "the line is too large to parse in the memory available")
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return None, ("invalid_json", f"invalid JSON: {brief(str(exc), 120)}")
    if "\\u" in text and _has_lone_surrogate(value):
        return None, ("invalid_unicode", "a string holds a lone surrogate escape (\\ud800-\\udfff), not text")
    return value, None
