"""The classifiers behind the filter: the shipped linear bundle (harm categories, jailbreak, indirect
attack), custom category bundles from ``TEMPERING_HOME/safety``, and the profanity lexicon.

``Classifier.score(texts)`` → per text, each category's calibrated probability (profanity: 0 or 1). The
filter (``safety.filter``) needs only that method, so tests pass a fake with canned scores or one that
raises. Weights are JSON and safetensors only (``safety.model``); nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Protocol

from tempering.safety.features import _FOLD, normalize
from tempering.safety.model import LinearBundle
from tempering.safety.policy import BUILTIN, PROFANITY

log = logging.getLogger(__name__)
WEIGHTS = Path(__file__).parent / "weights"
SHIPPED = WEIGHTS / "harm-v1"
_WORDS = re.compile(r"\w+")


class Scorer(Protocol):
    categories: frozenset[str]

    def score(self, texts: list[str]) -> list[dict[str, float]]: ...


class ClassifierError(RuntimeError):
    """A classifier could not score (missing or damaged weights, an internal error)."""


class ProfanityLexicon:
    def __init__(self, path: Path = WEIGHTS / "profanity.json"):
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        self.words = frozenset(doc["words"])
        self.stems = tuple(doc["stems"])

    def find(self, text: str) -> list[str]:
        folded = normalize(text).translate(_FOLD)
        return [w for w in _WORDS.findall(folded) if w in self.words or w.startswith(self.stems)]


class Classifier:
    def __init__(self, bundles: list[LinearBundle], lexicon: ProfanityLexicon | None = None):
        self.bundles = bundles
        self.lexicon = lexicon or ProfanityLexicon()
        names = [n for b in bundles for n in b.names]
        self.categories = frozenset(names) | {PROFANITY}

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        out = [{} for _ in texts]
        for bundle in self.bundles:
            for row, probabilities in zip(out, bundle.probabilities(texts)):
                row.update(probabilities)
        for row, text in zip(out, texts):
            row[PROFANITY] = 1.0 if self.lexicon.find(text) else 0.0
        return out


def custom_dir() -> Path:
    """Where custom category bundles live: ``TEMPERING_HOME/safety/<name>.json|.safetensors``."""
    from tempering.settings import get_settings

    return get_settings().root / "safety"


def load_classifier(shipped: Path = SHIPPED, custom: Path | None = None) -> Classifier:
    bundles = [LinearBundle.load(shipped)]
    folder = custom_dir() if custom is None else custom
    if folder.is_dir():
        for doc in sorted(folder.glob("*.json")):
            try:
                bundle = LinearBundle.load(doc)
            except Exception as exc:  # noqa: BLE001 - one broken bundle (of any kind) must not stop every filter
                log.warning("custom safety bundle %s skipped: %s", doc, exc)
                continue
            clash = set(bundle.names) & (set(BUILTIN) | {n for b in bundles for n in b.names})
            if clash:
                log.warning("custom safety bundle %s skipped: it redefines %s", doc, sorted(clash))
                continue
            bundles.append(bundle)
    return Classifier(bundles)


_lock = threading.Lock()
_default: Classifier | None = None
_seen: tuple = ()  # the custom bundles the default classifier was loaded with: (name, size, mtime) each
_checked = 0.0
_folder: Path | None = None  # the custom folder of that look (another home: look again at once)
RECHECK_SECONDS = 2.0  # how often the custom folder is looked at for categories added or removed


def _custom_bundles() -> tuple:
    folder = custom_dir()
    if not folder.is_dir():
        return ()
    seen = []
    for path in folder.glob("*.json"):
        try:
            facts = path.stat()
        except FileNotFoundError:  # deleted between the listing and the look
            continue
        seen.append((path.name, facts.st_size, facts.st_mtime_ns))
    return tuple(sorted(seen))


def default_classifier() -> Classifier:
    """The process's classifier, loaded once (about 0.3 s) and again when a custom category is added or removed
    (the folder is looked at every ``RECHECK_SECONDS``), so every server and worker process sees a category the
    API trained without a restart."""
    import time

    global _default, _seen, _checked, _folder
    with _lock:
        now, folder = time.monotonic(), custom_dir()
        if _default is not None and folder == _folder and now - _checked < RECHECK_SECONDS:
            return _default
        _checked, _folder = now, folder
        bundles = _custom_bundles()
        if _default is None or bundles != _seen:
            _default, _seen = load_classifier(), bundles
        return _default


def reset_default_classifier() -> None:
    global _default
    with _lock:
        _default = None
