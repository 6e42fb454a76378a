"""Training safety classifiers: the shipped bundle from the public sets, or a custom category from a user's
own labelled examples. scikit-learn fits; ``safety.model`` exports and scores (no pickle ever written).

    python -m tempering.safety.train builtin --data shared/data/safety --out src/tempering/safety/weights/harm-v1
    python -m tempering.safety.train custom NAME examples.jsonl        # → TEMPERING_HOME/safety/NAME.*

Each head: logistic regression (class-balanced) on the train split, a logistic calibration of its decision
values on the validation split (so probabilities mean what they say, and the severity bands of
``safety.policy`` apply to every head alike). The test split is left to the benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tempering.safety import data as D
from tempering.safety.features import char_ngrams, word_ngrams
from tempering.safety.model import save_bundle

NAME_PATTERN = r"[a-z][a-z0-9_]{0,39}"


@dataclass
class HeadData:
    """One head's labelled rows (label under ``key``) and an optional weight per source."""

    name: str
    rows: list
    key: str
    source_weights: dict = field(default_factory=dict)
    description: str = ""
    C: float | None = None  # inverse regularisation; the bundle's when None

    def part(self, which: str):
        rows = [r for r in D.split(self.rows, which) if self.key in r.labels]
        return [r.text for r in rows], np.array([r.labels[self.key] for r in rows]), \
            np.array([self.source_weights.get(r.source, 1.0) for r in rows])


def _vectorizers(texts: list[str], max_word: int, max_char: int):
    from sklearn.feature_extraction.text import TfidfVectorizer

    word = TfidfVectorizer(analyzer=word_ngrams, sublinear_tf=True, min_df=2, max_features=max_word, dtype=np.float64)
    char = TfidfVectorizer(analyzer=char_ngrams, sublinear_tf=True, min_df=3, max_features=max_char, dtype=np.float64)
    word.fit(texts)
    char.fit(texts)
    return word, char


def _platt(decision: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    if len(set(y.tolist())) < 2:  # nothing to calibrate against: keep the raw logistic output
        return 1.0, 0.0
    fit = LogisticRegression(C=1e4, max_iter=1000).fit(decision.reshape(-1, 1), y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def fit_bundle(heads: list[HeadData], *, C: float = 4.0, max_word: int = 20000, max_char: int = 40000,
               sources: list | None = None, log=print) -> tuple[dict, dict]:
    """Fit one shared vectorizer on every head's training text and a calibrated head per category."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    train_texts = sorted({t for h in heads for t in h.part("train")[0]})
    word, char = _vectorizers(train_texts, max_word, max_char)

    def matrix(texts):
        return sp.hstack([word.transform(texts), char.transform(texts)]).tocsr()

    coefs, intercepts, metas = [], [], []
    for head in heads:
        started = time.perf_counter()
        texts, y, w = head.part("train")
        if len(set(y.tolist())) < 2:
            raise ValueError(f"{head.name}: the training split needs positive and negative examples")
        model = LogisticRegression(C=head.C or C, class_weight="balanced", max_iter=3000)
        model.fit(matrix(texts), y, sample_weight=w)
        v_texts, v_y, _ = head.part("valid")
        v_decision = model.decision_function(matrix(v_texts)) if v_texts else np.zeros(0)
        a, b = _platt(v_decision, v_y) if v_texts else (1.0, 0.0)
        ap = float(average_precision_score(v_y, v_decision)) if len(set(v_y.tolist())) == 2 else None
        coefs.append(model.coef_[0])
        intercepts.append(model.intercept_[0])
        metas.append({"name": head.name, "description": head.description, "calibration": [a, b],
                      "C": head.C or C, "train": {"rows": len(y), "positives": int(y.sum())},
                      "valid": {"rows": len(v_y), "positives": int(v_y.sum()), "average_precision": ap},
                      "sources": sorted({r.source for r in head.rows})})
        log(f"{head.name}: {len(y)} rows ({int(y.sum())} positive), valid AP "
            f"{'n/a' if ap is None else f'{ap:.3f}'}, {time.perf_counter() - started:.1f}s")
    meta = {
        "analyzers": [{"name": "word", "vocabulary": word.get_feature_names_out().tolist()},
                      {"name": "char", "vocabulary": char.get_feature_names_out().tolist()}],
        "heads": metas,
        "training": {"C": C, "max_word": max_word, "max_char": max_char, "split": "sha256(text) 60/20/20",
                     "sources": sources or []},
    }
    arrays = {"idf_word": word.idf_, "idf_char": char.idf_, "coef": np.stack(coefs, axis=1),
              "intercept": np.array(intercepts)}
    return meta, arrays


# The licences of what the shipped bundle is trained on (all allow redistributing trained weights; see
# shared/data/safety/SOURCE.md and docs/safety.md). XSTest is never trained on: it measures false positives.
BUILTIN_SOURCES = [
    {"name": "openai_moderation", "repo": "openai/moderation-api-release", "licence": "MIT",
     "cite": "Markov et al. 2022, arXiv:2208.03274"},
    {"name": "davidson", "repo": "t-davidson/hate-speech-and-offensive-language", "licence": "MIT",
     "cite": "Davidson et al., ICWSM 2017"},
    {"name": "jailbreak_classification", "repo": "jackhhao/llm-warden", "licence": "MIT"},
    {"name": "deepset", "repo": "deepset/prompt-injections", "licence": "Apache-2.0"},
]


def builtin_heads(folder: Path) -> list[HeadData]:
    om, dv = D.openai_moderation(folder), D.davidson(folder)
    jailbreaks, injections = D.jailbreaks(folder), D.injections(folder)
    # Davidson's tweets outnumber the moderation samples 15:1 on hate; weighting each source to the same
    # total keeps the hate head from learning only tweet style.
    om_weight = sum(1 for r in dv if "hate" in r.labels) / max(1, sum(1 for r in om if "hate" in r.labels))
    # Prompt attacks. jailbreak (what users write): the in-the-wild jailbreaks and deepset's injections
    # (C and the weights chosen on the validation split; see docs/safety.md). indirect_attack (documents): deepset's injections against its
    # legitimate requests plus the jailbreak set's benign persona and task prompts, which look like system
    # prompts ("You are…", "Play the role of…") and must not count as attacks.
    as_jailbreak = [D.Example(r.text, {"jailbreak": r.labels["indirect_attack"]}, r.source) for r in injections]
    # Everyday text as jailbreak negatives (tweets that are not hate, moderation samples with no harm label):
    # without them short first-person questions ("I don't understand this fee on my statement") looked like
    # deepset's short injections, and about 2 % of ordinary customer-support questions were flagged.
    everyday = [D.Example(r.text, {"jailbreak": 0}, r.source) for r in dv + om
                if r.labels and not any(r.labels.values())]
    benign = [D.Example(r.text, {"indirect_attack": 0}, r.source) for r in jailbreaks if not r.labels["jailbreak"]]
    return [
        HeadData("hate", om + dv, "hate", {"openai_moderation": om_weight}, "hate speech"),
        HeadData("sexual", om, "sexual", description="sexual content"),
        HeadData("violence", om, "violence", description="violence"),
        HeadData("self_harm", om, "self_harm", description="self-harm"),
        HeadData("jailbreak", jailbreaks + as_jailbreak + everyday, "jailbreak", description="user prompt attack"),
        HeadData("indirect_attack", injections + benign, "indirect_attack", {"deepset": 3.0},
                 "instructions injected into documents, system or tool text", C=16.0),
    ]


def train_custom(name: str, path: Path, out_dir: Path, *, log=print) -> Path:
    """A custom category from ``{"text", "label"}`` JSON Lines: its own bundle, found by the classifier
    under ``out_dir`` and usable in a policy by ``name``."""
    import re

    from tempering.safety.policy import BUILTIN

    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"category name {name!r}: lower-case letters, digits and '_', starting with a letter")
    if name in BUILTIN:
        raise ValueError(f"category name {name!r} is built in; choose another")
    rows = D.load_jsonl(Path(path))
    meta, arrays = fit_bundle([HeadData(name, rows, "label", description=f"custom: {Path(path).name}")],
                              max_word=20000, max_char=20000, sources=[{"name": str(path), "licence": "user"}],
                              log=log)
    target = Path(out_dir) / name
    save_bundle(target, meta, arrays)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tempering.safety.train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    builtin = sub.add_parser("builtin", help="the shipped bundle from the public sets")
    builtin.add_argument("--data", type=Path, required=True, help="folder of shared/data/safety")
    builtin.add_argument("--out", type=Path, required=True, help="bundle path without suffix")
    custom = sub.add_parser("custom", help="a custom category from your labelled JSON Lines")
    custom.add_argument("name")
    custom.add_argument("file", type=Path, help='JSON Lines of {"text": ..., "label": 0|1}')
    custom.add_argument("--out-dir", type=Path, default=None, help="default: TEMPERING_HOME/safety")
    args = parser.parse_args(argv)
    if args.command == "builtin":
        meta, arrays = fit_bundle(builtin_heads(args.data), sources=BUILTIN_SOURCES)
        save_bundle(args.out, meta, arrays)
        print(f"wrote {args.out}.json and {args.out}.safetensors")
    else:
        from tempering.safety.classify import custom_dir

        target = train_custom(args.name, args.file, args.out_dir or custom_dir())
        print(f"wrote {target}.json and {target}.safetensors; use '{args.name}' in a policy")
        print(json.dumps({"categories": {"prompt": {args.name: "medium"}}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
