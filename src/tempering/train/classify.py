"""The text-classification task: a sequence-classification head on the base model.

The head (hidden size × number of labels, reading the last real token) is trained fully and the body with
the job's adapter (LoRA, DoRA, or every weight) (PEFT's SEQ_CLS task keeps the head in the adapter as a module to save). Examples are the raw text's
token ids and a label index; the loss is the mean cross-entropy per example and "token accuracy" in the
shared metrics is the example accuracy. Also owns the classification metrics (accuracy, macro-F1,
per-class F1, the most frequent confusions) computed with scikit-learn. Knows nothing about HTTP.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tempering.train.loss import LossResult, causal_lm


@dataclass(frozen=True)
class ClassExample:
    input_ids: list[int]
    label: int

    def __len__(self) -> int:
        return len(self.input_ids)


def texts_and_labels(examples: list[list[dict]], labels: list[str] | None) -> tuple[list[str], list[str]]:
    """The text to classify (the last user turn) and its label (given, else the last assistant turn)."""
    texts = [next(m["content"] for m in reversed(msgs) if m["role"] == "user") for msgs in examples]
    if labels is None:
        labels = [next(m["content"] for m in reversed(msgs) if m["role"] == "assistant").strip()
                  for msgs in examples]
    return texts, list(labels)


def encode_texts(tokenizer, texts: list[str], labels: list[str], label2id: dict[str, int],
                 max_length: int) -> list[ClassExample]:
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    return [ClassExample(i, label2id[label]) for i, label in zip(ids, labels)]


def collate_classes(examples: list[ClassExample], pad_id: int) -> dict:
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        input_ids[row, : len(e)] = torch.tensor(e.input_ids)
        attention_mask[row, : len(e)] = 1
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _logits(model, batch: dict) -> torch.Tensor:
    """Head output at each row's last real token (right padding, so the pad id never matters)."""
    lm = causal_lm(model)  # the *ForSequenceClassification module under the PEFT wrapper
    device = next(lm.parameters()).device
    backbone = getattr(lm, lm.base_model_prefix)
    hidden = backbone(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                      use_cache=False).last_hidden_state
    last = batch["attention_mask"].sum(dim=1).to(device) - 1
    pooled = hidden[torch.arange(hidden.shape[0], device=device), last]
    return lm.score(pooled).float()


def classification_loss(model, batch: dict, label_smoothing: float = 0.0) -> LossResult:
    logits = _logits(model, batch)
    labels = batch["labels"].to(logits.device)
    loss_sum = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing)
    n_correct = int((logits.detach().argmax(-1) == labels).sum())
    return LossResult(loss_sum=loss_sum, n_tokens=int(labels.numel()), n_correct=n_correct)


def load_classifier(path, placement, id2label: dict[int, str]):
    """The base weights under a freshly initialised classification head (no warnings about it)."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    from tempering.catalog.loading import LOADING

    level = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # "score.weight newly initialised" is the point
    try:
        with LOADING:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()},
                dtype=placement.dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True)
    finally:
        transformers.utils.logging.set_verbosity(level)
    return model.to(placement.device)


@torch.inference_mode()
def predict(model, examples: list[ClassExample], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Class probabilities, one row per example, in order."""
    was_training = model.training
    model.eval()
    rows = []
    for start in range(0, len(examples), batch_size):
        rows.append(torch.softmax(_logits(model, collate_classes(examples[start : start + batch_size], pad_id)),
                                  dim=-1).cpu())
    model.train(was_training)
    return torch.cat(rows) if rows else torch.empty(0)


def classification_metrics(y_true: list[int], y_pred: list[int], id2label: dict[int, str]) -> dict:
    """Accuracy, macro-F1 and per-class F1 (scikit-learn), and the five most frequent confusions."""
    from sklearn.metrics import accuracy_score, f1_score

    if not y_true:
        return {}
    classes = sorted(id2label)
    per_class = f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    confusions = Counter((t, p) for t, p in zip(y_true, y_pred) if t != p)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "per_class_f1": {id2label[c]: float(f) for c, f in zip(classes, per_class)},
        "top_confusions": [{"true": id2label[t], "predicted": id2label[p], "count": n}
                           for (t, p), n in confusions.most_common(5)],
        "n": len(y_true),
    }
