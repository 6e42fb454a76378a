"""A linear text classifier read from safe files: TF-IDF features (word and character n-grams) times
per-head coefficients, then a logistic calibration per head.

A bundle is two files side by side: ``<name>.json`` (format, vocabularies, heads, calibration, provenance)
and ``<name>.safetensors`` (idf vectors, coefficient matrix, intercepts). Nothing is unpickled: the
vectorizer is re-implemented here with numpy/scipy from the exported vocabulary and idf, using the very
analyzers training used (``safety.features``). No scikit-learn, no torch.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tempering.safety.features import ANALYZERS

FORMAT = "tempering-safety-linear/1"


@dataclass
class Head:
    name: str
    calibration: tuple[float, float]  # p = sigmoid(a * decision + b), fitted on the validation split
    meta: dict


class LinearBundle:
    """Heads sharing one vectorizer. ``probabilities(texts)`` → one dict of calibrated probabilities per
    text."""

    def __init__(self, meta: dict, arrays: dict[str, np.ndarray]):
        if meta.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} bundle: {meta.get('format')!r}")
        self.meta = meta
        self.analyzers = []  # (analyzer function, vocabulary {gram: column}, idf, column offset)
        offset = 0
        for part in meta["analyzers"]:
            vocab = {gram: i for i, gram in enumerate(part["vocabulary"])}
            idf = np.asarray(arrays[f"idf_{part['name']}"], dtype=np.float64)
            if len(idf) != len(vocab):
                raise ValueError(f"idf_{part['name']} has {len(idf)} entries for {len(vocab)} n-grams")
            self.analyzers.append((ANALYZERS[part["name"]], vocab, idf, offset))
            offset += len(vocab)
        self.coef = np.asarray(arrays["coef"], dtype=np.float64)  # (features, heads)
        self.intercept = np.asarray(arrays["intercept"], dtype=np.float64)
        if self.coef.shape != (offset, len(meta["heads"])):
            raise ValueError(f"coef has shape {self.coef.shape}, expected ({offset}, {len(meta['heads'])})")
        self.heads = [Head(h["name"], tuple(h["calibration"]), h) for h in meta["heads"]]
        self._calibration = np.array([h.calibration for h in self.heads], dtype=np.float64)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.heads]

    @classmethod
    def load(cls, path: Path) -> LinearBundle:
        """``path`` without suffix, or either file of the pair."""
        from safetensors.numpy import load_file

        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
        meta = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        return cls(meta, load_file(str(stem.with_suffix(".safetensors"))))

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and TF-IDF values of one text: per analyzer, sublinear term frequency times idf,
        L2-normalised (scikit-learn's ``TfidfVectorizer(sublinear_tf=True)``), the analyzers side by side."""
        columns, values = [], []
        for analyzer, vocab, idf, offset in self.analyzers:
            counts = Counter(g for g in analyzer(text) if g in vocab)
            if not counts:
                continue
            idx = np.fromiter((vocab[g] for g in counts), dtype=np.int64, count=len(counts))
            tf = np.fromiter((1.0 + math.log(c) for c in counts.values()), dtype=np.float64, count=len(counts))
            weights = tf * idf[idx]
            weights /= np.linalg.norm(weights)
            columns.append(idx + offset)
            values.append(weights)
        if not columns:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate(columns), np.concatenate(values)

    def decision(self, text: str) -> np.ndarray:
        columns, values = self.features(text)
        return values @ self.coef[columns] + self.intercept

    def probabilities(self, texts: list[str]) -> list[dict[str, float]]:
        out = []
        for text in texts:
            z = self.decision(text) * self._calibration[:, 0] + self._calibration[:, 1]
            p = 1.0 / (1.0 + np.exp(-z))
            out.append({h.name: float(v) for h, v in zip(self.heads, p)})
        return out


def save_bundle(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Both files written to temp names, then renamed (the JSON last: it is what a reader looks for)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, tmp_tensors = path.with_suffix(".safetensors"), path.with_suffix(".safetensors.tmp")
    doc, tmp_doc = path.with_suffix(".json"), path.with_suffix(".json.tmp")
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, str(tmp_tensors))
    tmp_doc.write_text(json.dumps({**meta, "format": FORMAT}, ensure_ascii=False, separators=(",", ":")),
                       encoding="utf-8")
    tmp_tensors.replace(tensors)
    tmp_doc.replace(doc)
