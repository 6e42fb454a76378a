"""Suspicious content: mojibake, lost bytes, escaped escapes, control characters, glued words, and text
that looks like personal data (emails, phone numbers, card numbers passing the Luhn check)."""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict

from tempering.data.findings.finding import Finding, lines_text
from tempering.data.formats import Example

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
# Digit groups inside a longer run of digit groups (a card number, an id) are not a phone number.
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[\s.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])"
    r"\d{3,4}[\s.-]\d{3,4}(?!\w)(?![\s.-]\d)"
)
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_ESCAPED = re.compile(r"\\u[0-9a-fA-F]{4}")
_GLUED = re.compile(r"[a-z],[a-z]")
# Runs of characters that UTF-8 text read as Latin-1/cp1252 is made of ("Ã©", "â€™").
_LATIN_RUN = re.compile(
    r"[\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    r"\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]{2,}"
)
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\ufeff"}

SUSPICIOUS_CODES = {
    "mojibake": "text that looks like UTF-8 decoded as Latin-1 or cp1252 ('Ã©', 'â€™')",
    "replacement_character": "U+FFFD: bytes were lost in an earlier decoding",
    "escaped_unicode": "a literal \\uXXXX escape left in the text (escaped twice)",
    "control_characters": "control or invisible characters other than tab and newline",
    "missing_space": "a comma glued to the next word ('visit,t'), often a sign of damaged text",
    "pii_email": "looks like an email address",
    "pii_phone": "looks like a phone number",
    "pii_card": "looks like a payment card number (passes the Luhn check)",
}


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _is_mojibake(run: str) -> bool:
    for encoding in ("cp1252", "latin-1"):
        try:
            run.encode(encoding).decode("utf-8")
            return True
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    return False


def content_flags(text: str) -> set[str]:
    """Codes of ``SUSPICIOUS_CODES`` that apply to ``text``."""
    flags = set()
    if any(_is_mojibake(run) for run in _LATIN_RUN.findall(text)):
        flags.add("mojibake")
    if "\ufffd" in text:
        flags.add("replacement_character")
    if _ESCAPED.search(text):
        flags.add("escaped_unicode")
    if any((unicodedata.category(c) == "Cc" and c not in "\t\n\r") or c in _INVISIBLE for c in text):
        flags.add("control_characters")
    if _GLUED.search(text):
        flags.add("missing_space")
    if _EMAIL.search(text):
        flags.add("pii_email")
    if _PHONE.search(text):
        flags.add("pii_phone")
    if any(_luhn(re.sub(r"\D", "", m)) for m in _CARD.findall(text)):
        flags.add("pii_card")
    return flags


def content_findings(train: list[Example], validation: list[Example] | None) -> list[Finding]:
    hits: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for side, examples in ((0, train), (1, validation or [])):
        for example in examples:
            flags = set().union(*(content_flags(m["content"]) for m in example.messages))
            for code in flags:
                hits[code][side].append(example.line)
    findings = []
    for code, description in SUSPICIOUS_CODES.items():
        if code in hits:
            train_lines, valid_lines = hits[code]
            where = (
                [f"{len(train_lines)} training example(s) (lines {lines_text(train_lines)})"]
                if train_lines
                else []
            )
            where += (
                [f"{len(valid_lines)} validation example(s) (lines {lines_text(valid_lines)})"]
                if valid_lines
                else []
            )
            findings.append(
                Finding(
                    level="warning",
                    code=code,
                    lines=train_lines,
                    validation_lines=valid_lines,
                    message=f"{description}: {' and '.join(where)}",
                )
            )
    return findings
