"""Readers for the public labelled sets under ``shared/data/safety`` (see docs/safety.md for sources and
licences), and the seeded split every trainer and the benchmark share.

The split is a pure function of the text (a hash), so identical texts land on one side, the benchmark and
the trainer agree without a file between them, and a rerun reproduces it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

HARM = ("hate", "sexual", "violence", "self_harm")
# OpenAI moderation labels → our harm categories (a row is positive if any of its labels is 1; unknown if
# every one of them is missing)
OPENAI_LABELS = {"hate": ("H", "H2"), "sexual": ("S", "S3"), "violence": ("V", "V2"), "self_harm": ("SH",)}
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Example:
    text: str
    labels: dict  # category → 0/1; a category absent from the dict is unknown for this text
    source: str


def split_of(text: str, salt: str = "tempering-safety-v1") -> str:
    """60 % train, 20 % valid (calibration and thresholds), 20 % test (the benchmark only)."""
    key = " ".join(text.split()).lower()
    bucket = int(hashlib.sha256((salt + key).encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 60 else "valid" if bucket < 80 else "test"


def openai_moderation(folder: Path) -> list[Example]:
    rows = []
    with open(folder / "openai_moderation_samples-1680.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            labels = {}
            for category, keys in OPENAI_LABELS.items():
                known = [row[k] for k in keys if k in row]
                if known:
                    labels[category] = int(any(known))
            rows.append(Example(row["prompt"], labels, "openai_moderation"))
    return rows


def davidson(folder: Path) -> list[Example]:
    """Hate speech (class 0) against neither (class 2); offensive-only tweets (class 1) are hate-negative
    but kept, so that swearing alone is not learnt as hate (profanity has its own lexicon)."""
    import html

    rows = []
    with open(folder / "davidson_labeled_data.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = html.unescape(row["tweet"])
            rows.append(Example(text, {"hate": int(row["class"] == "0")}, "davidson"))
    return rows


def jailbreaks(folder: Path) -> list[Example]:
    with open(folder / "jailbreak_classification_balanced.csv", encoding="utf-8", newline="") as f:
        return [Example(r["prompt"], {"jailbreak": int(r["type"] == "jailbreak")}, "jailbreak_classification")
                for r in csv.DictReader(f)]


def injections(folder: Path) -> list[Example]:
    with open(folder / "deepset_prompt_injections.jsonl", encoding="utf-8") as f:
        return [Example(r["text"], {"indirect_attack": int(r["label"])}, "deepset")
                for r in map(json.loads, f)]


def xstest(folder: Path) -> list[Example]:
    """XSTest: ``unsafe`` = 1 under the pseudo-category ``unsafe``; used for false positives only."""
    with open(folder / "xstest_prompts.csv", encoding="utf-8", newline="") as f:
        return [Example(r["prompt"], {"unsafe": int(r["label"] == "unsafe")}, "xstest") for r in csv.DictReader(f)]


def load_jsonl(path: Path, text_key: str = "text", label_key: str = "label") -> list[Example]:
    """A user's labelled examples for a custom category: JSON Lines of ``{"text": …, "label": 0|1}``
    (``label`` may also be true/false or "1"/"0")."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            label = row[label_key]
            if isinstance(label, str):
                label = label.strip().lower() in ("1", "true", "yes", "positive")
            rows.append(Example(str(row[text_key]), {"label": int(bool(label))}, str(path)))
    return rows


def split(rows: list[Example], part: str) -> list[Example]:
    return [r for r in rows if split_of(r.text) == part]
