"""Custom blocklists: exact terms and regular expressions a project never wants in prompts or completions.

Exact terms are matched case-insensitively as whole-word token sequences, in time linear in the text
whatever the number of terms. Regular expressions come from users, so each is bounded twice: validated up
front (at most ``MAX_PATTERN`` characters, compiles, no empty match) and searched with the ``regex``
package's ``timeout``, since Python's ``re`` cannot be interrupted and a catastrophic-backtracking pattern
would otherwise hold a server thread indefinitely. A search that times out is a filter error
(``content_filter_error``), handled like a failing classifier, never a silent pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import regex
from pydantic import BaseModel, Field

MAX_PATTERN = 500
MAX_TERM = 200
MAX_ITEMS = 10_000
# Each regular expression may take up to its time limit on every text, so their number bounds a check's worst case
# (100 × 50 ms); exact terms cost nothing extra and are the tool for long lists.
MAX_REGEX_ITEMS = 100
REGEX_TIMEOUT_S = 0.05  # per pattern per text: ample for sane patterns on a window or a prompt


class BlocklistTimeout(RuntimeError):
    """A regex item ran past its time limit."""


class BlocklistItem(BaseModel):
    id: str
    text: str = Field(min_length=1, max_length=MAX_PATTERN)
    is_regex: bool = False
    description: str = ""


class Blocklist(BaseModel):
    name: str = Field(pattern=r"^[0-9A-Za-z._~-]{1,64}$")
    description: str = ""
    items: list[BlocklistItem] = Field(default_factory=list, max_length=MAX_ITEMS)


@dataclass(frozen=True)
class Match:
    blocklist: str
    item_id: str
    start: int
    end: int


def validate_item(text: str, is_regex: bool) -> str | None:
    """The problem with an item, in words, or None."""
    if not text.strip():
        return "an item must not be blank"
    if not is_regex:
        return f"a term is at most {MAX_TERM} characters" if len(text) > MAX_TERM else None
    if len(text) > MAX_PATTERN:
        return f"a regular expression is at most {MAX_PATTERN} characters"
    try:
        pattern = regex.compile(text, regex.IGNORECASE)
    except regex.error as exc:
        return f"not a valid regular expression: {exc}"
    try:
        if pattern.fullmatch("", timeout=REGEX_TIMEOUT_S):
            return "a regular expression must not match the empty string"
    except TimeoutError:
        return "a regular expression took too long on an empty text"
    return None


# Exact terms are matched as token sequences: runs of letters/digits and single punctuation marks, case-folded,
# whitespace between tokens ignored. A dictionary from first token to terms makes a search linear in the text
# whatever the number of terms (one regular-expression alternation of 10,000 terms took over 0.3 s on 8,000
# characters), and whole tokens give word boundaries: "zorblax" does not match inside "zorblaxian".
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _tokens(text: str) -> list[tuple[str, int, int]]:
    return [(m.group().casefold(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


class CompiledBlocklist:
    def __init__(self, blocklist: Blocklist):
        self.name = blocklist.name
        self._by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        terms = [i for i in blocklist.items if not i.is_regex]
        for item in terms:
            sequence = tuple(t for t, _, _ in _tokens(item.text))
            if sequence:
                self._by_first.setdefault(sequence[0], []).append((sequence, item.id))
        self.longest_term = max((len(t.text) for t in terms), default=0)
        self._regexes = [(i.id, regex.compile(i.text, regex.IGNORECASE)) for i in blocklist.items if i.is_regex]

    def find(self, text: str) -> list[Match]:
        found = []
        if self._by_first:
            tokens = _tokens(text)
            words = [t for t, _, _ in tokens]
            for i, (token, start, _) in enumerate(tokens):
                for sequence, item_id in self._by_first.get(token, ()):
                    if tuple(words[i:i + len(sequence)]) == sequence:
                        found.append(Match(self.name, item_id, start, tokens[i + len(sequence) - 1][2]))
        for item_id, pattern in self._regexes:
            try:
                m = pattern.search(text, timeout=REGEX_TIMEOUT_S)
            except TimeoutError as exc:
                raise BlocklistTimeout(f"blocklist {self.name!r} item {item_id} timed out") from exc
            if m is not None and m.end() > m.start():
                found.append(Match(self.name, item_id, m.start(), m.end()))
        return found


def find_all(blocklists: list[CompiledBlocklist], text: str) -> list[Match]:
    return [m for b in blocklists for m in b.find(text)]


def compile_all(blocklists) -> list[CompiledBlocklist]:
    return [b if isinstance(b, CompiledBlocklist) else CompiledBlocklist(b) for b in blocklists]
