"""Text → n-gram counts, the one analyzer both training and scoring use.

Training hands these functions to scikit-learn's ``TfidfVectorizer(analyzer=…)``; scoring (``safety.model``)
calls them again and applies the exported vocabulary and idf with numpy/scipy, so the two cannot drift.
Pure Python: no scikit-learn, no torch.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

_WORD = re.compile(r"\w\w+")
_SPACE = re.compile(r"\s+")
# Leetspeak and look-alike digits/symbols folded into letters, so "k1ll" and "kill" share their n-grams.
_FOLD = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
# Long inputs are scored on their first and last characters: the cost stays bounded, and attacks hide in
# either end. Windows of a stream are shorter than this anyway.
MAX_CHARS = 8000


def normalize(text: str) -> str:
    """NFKC (full-width and other compatibility forms to plain ones), lower case, whitespace collapsed."""
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS // 2] + " " + text[-MAX_CHARS // 2:]
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", text).strip()


def word_ngrams(text: str) -> list[str]:
    """Word unigrams and bigrams of the normalized text (a bigram joined with one space)."""
    words = _WORD.findall(normalize(text))
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def char_ngrams(text: str, lo: int = 2, hi: int = 5) -> list[str]:
    """Character n-grams of ``lo``..``hi`` inside word boundaries (each word padded with one space, as
    scikit-learn's ``char_wb``), after folding leetspeak digits into letters."""
    grams: list[str] = []
    for word in normalize(text).translate(_FOLD).split(" "):
        if not word:
            continue
        padded = f" {word} "
        size = len(padded)
        for n in range(lo, min(hi, size) + 1):
            grams.extend(padded[i:i + n] for i in range(size - n + 1))
    return grams


ANALYZERS = {"word": word_ngrams, "char": char_ngrams}
