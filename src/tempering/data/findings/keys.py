"""Text keys that decide when two examples are the same (exact, near, same prompt; ``data.split`` uses them
too), and label inference from repeated short answers. Pure functions of chat messages."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

MAX_LABEL_CHARS, MAX_LABEL_WORDS = 40, 5  # "short answers that repeat" are treated as labels
MIN_EXAMPLES_TO_DETECT_LABELS = 10  # below this, "answers repeat" is chance, not a label set
# A job's training answers are a label set when each distinct answer is seen twice on average: looser than
# infer_labels' third, and its labels may be longer than 40 characters, because a closed training set is
# strong evidence (the evaluation also asks its references to fall in the set). BANKING77 with 10 examples per
# intent has 77 answers over 770 examples, and intents of up to 48 characters
# ("balance_not_updated_after_cheque_or_cash_deposit").
MAX_TRAINING_LABEL_CHARS, MAX_TRAINING_LABEL_WORDS, MAX_DISTINCT_TRAINING_SHARE = 64, 8, 0.5
PREVIEW_CHARS = 80


def normalize(text: str) -> str:
    """Compatibility-folded, case-folded, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(c if c.isalnum() else " " for c in text)
    return " ".join(kept.split())


def exact_key(messages: list[dict]) -> tuple:
    return tuple((m["role"], m["content"]) for m in messages)


def near_key(messages: list[dict]) -> tuple:
    return tuple((m["role"], normalize(m["content"])) for m in messages)


def prompt_key(messages: list[dict]) -> tuple:
    """Everything the model is given (system and user turns), normalized: two examples with the same
    prompt on both sides of a split leak the answer even when the answers differ."""
    return tuple((m["role"], normalize(m["content"])) for m in messages if m["role"] != "assistant")


def final_answer(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")


def infer_labels(examples: Sequence[list[dict]]) -> list[str] | None:
    """The final assistant answers as class labels, when they look like labels: short, one line, and
    repeating (at most a third as many distinct answers as examples). None otherwise."""
    answers = [final_answer(m).strip() for m in examples]
    if len(answers) < 2:
        return None
    short = all(
        a and len(a) <= MAX_LABEL_CHARS and len(a.split()) <= MAX_LABEL_WORDS and "\n" not in a
        for a in answers
    )
    if short and len(set(answers)) <= max(2, len(answers) // 3):
        return answers
    return None


def training_label_set(answers: Sequence[str]) -> list[str] | None:
    """The distinct training answers, sorted, when they form a closed label set a job learns: at least
    ``MIN_EXAMPLES_TO_DETECT_LABELS`` answers, each one line of at most 64 characters and 8 words, at most half
    as many distinct answers as examples. None otherwise."""
    answers = [a.strip() for a in answers]
    if len(answers) < MIN_EXAMPLES_TO_DETECT_LABELS:
        return None
    if not all(a and len(a) <= MAX_TRAINING_LABEL_CHARS and len(a.split()) <= MAX_TRAINING_LABEL_WORDS
               and "\n" not in a for a in answers):
        return None
    distinct = sorted(set(answers))
    return distinct if len(distinct) <= MAX_DISTINCT_TRAINING_SHARE * len(answers) else None


def preview(messages: list[dict]) -> str:
    text = " | ".join(m["content"].replace("\n", " ") for m in messages if m["role"] != "system")
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
