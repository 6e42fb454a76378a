"""The text-classification task: a sequence-classification head on the base model.

The head (hidden size × number of labels, reading the last real token) is trained fully and the body with
the job's adapter (LoRA, DoRA, or every weight) (PEFT's SEQ_CLS task keeps the head in the adapter as a module
to save). Examples are the token ids of the text as the model reads it (``encode_inputs``: in its chat template,
or alone for classifiers saved before that) and a label index; the loss is the mean cross-entropy per example and "token accuracy" in the
shared metrics is the example accuracy. Also owns the classification metrics (accuracy, macro-F1,
per-class F1, the most frequent confusions) computed with scikit-learn. Knows nothing about HTTP.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tempering.data.encode import encode_prompt
from tempering.train import packing
from tempering.train.batching import common_prefix_length
from tempering.train.loss import LossResult, causal_lm, hidden_with_shared_prefix


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


def input_format_for(tokenizer) -> str:
    """How a new classifier reads its texts: ``chat`` when the model has a chat template, else ``text``."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "text"


def _in_template(tokenizer, text: str) -> list[int]:
    """``text`` as the user's turn with the assistant's turn opened (``data.encode.encode_prompt``: the text is
    read as text, a special token's spelling in it included)."""
    return encode_prompt(tokenizer, [{"role": "user", "content": text}])


def encode_inputs(tokenizer, texts: list[str], input_format: str, max_length: int) -> list[list[int]]:
    """The token ids a classifier reads for each text, at most ``max_length``. ``text``: the text alone (no
    special tokens). ``chat``: the text as the user's turn of the model's chat template with the assistant's
    turn opened, tokenized as ``apply_chat_template`` does, so the last token, which the head reads, is where
    the model would begin its answer (the template's leading tokens are the same in every row: a batch
    computes them once); a long text is cut to fit, the template never."""
    if input_format == "text":
        return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    if input_format != "chat":
        raise ValueError(f"unknown classifier input format {input_format!r}")
    ids = [_in_template(tokenizer, text) for text in texts]
    long = [row for row, i in enumerate(ids) if len(i) > max_length]
    if long:  # only these are tokenized again: the text cut to the room the template leaves
        room = max(1, max_length - len(_in_template(tokenizer, "")))
        for row in long:
            plain = tokenizer(texts[row], add_special_tokens=False, split_special_tokens=True)["input_ids"]
            ids[row] = _in_template(tokenizer, tokenizer.decode(plain[:room]))[-max_length:]
    return ids


def encode_texts(tokenizer, texts: list[str], labels: list[str], label2id: dict[str, int],
                 max_length: int, input_format: str = "text") -> list[ClassExample]:
    ids = encode_inputs(tokenizer, texts, input_format, max_length)
    return [ClassExample(i, label2id[label]) for i, label in zip(ids, labels)]


def collate_classes(examples: list[ClassExample], pad_id: int) -> dict:
    """Right-padded ``input_ids`` and ``attention_mask``, the ``labels``, and ``prefix_length``: the leading
    tokens every row shares (a chat template's), computed once (``loss``), never a row's last token."""
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        input_ids[row, : len(e)] = torch.tensor(e.input_ids)
        attention_mask[row, : len(e)] = 1
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    prefix = common_prefix_length([e.input_ids for e in examples], min(len(e) for e in examples) - 1)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "prefix_length": prefix}


def _logits(model, batch: dict) -> torch.Tensor:
    """Head output at each row's last real token (right padding, so the pad id never matters)."""
    lm = causal_lm(model)  # the *ForSequenceClassification module under the PEFT wrapper
    device = next(lm.parameters()).device
    backbone = getattr(lm, lm.base_model_prefix)
    prefix = int(batch.get("prefix_length", 0))
    if packing.usable(lm, batch):  # one sequence, each row ending at its last token (``packing``)
        hidden, own = packing.packed_hidden(backbone, batch, device, keep_last=True)
        if len(own) != batch["input_ids"].shape[0]:  # every row keeps its last token: one logit row per example
            raise RuntimeError("a classification row packed to no tokens")
        ends = torch.tensor([n for _, n in own], device=device).cumsum(0) - 1
        return lm.score(hidden[ends]).float()
    if prefix > 0:  # hidden[:, j] is position prefix + j
        hidden = hidden_with_shared_prefix(lm, backbone, batch, prefix, batch["input_ids"].shape[1], device)
    else:
        hidden = backbone(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                          use_cache=False).last_hidden_state
    last = batch["attention_mask"].sum(dim=1).to(device) - 1 - prefix
    pooled = hidden[torch.arange(hidden.shape[0], device=device), last]
    return lm.score(pooled).float()


def classification_loss(model, batch: dict, label_smoothing: float = 0.0,
                        class_weights: list[float] | None = None) -> LossResult:
    """Summed cross-entropy of the batch's examples; ``class_weights`` (one per label index, from
    ``choose_class_weights``) weigh each example by its label: the training loss's, never validation's."""
    logits = _logits(model, batch)
    labels = batch["labels"].to(logits.device)
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=logits.dtype, device=logits.device)
    loss_sum = F.cross_entropy(logits, labels, weight=weight, reduction="sum", label_smoothing=label_smoothing)
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


def label_words(label: str) -> str | None:
    """A label name as words ("card_arrival" -> "card arrival"), or None when it is not words: a name with a
    digit ("0", "LABEL_1", "class2") or without two letters is an id, and its embedding would mean nothing."""
    text = " ".join(re.sub(r"[_\-]+", " ", label).split())
    if any(c.isdigit() for c in text) or sum(c.isalpha() for c in text) < 2:
        return None
    return text


def choose_head_init(head_init: str, labels: list[str]) -> tuple[str, str]:
    """The head init a job uses (``labels`` or ``random``) and why, for its ``head_init`` option."""
    if head_init == "random":
        return "random", "head_init random"
    if head_init == "labels":
        return "labels", "head_init labels"
    ids = [label for label in labels if label_words(label) is None]
    if ids:
        return "random", f"head_init auto: {len(ids)} label(s) are not words, e.g. {ids[0]!r}"
    return "labels", "head_init auto: every label is a word or words"


IMBALANCE_RATIO = 3  # class_weights auto: balanced once the largest label has this many times the rarest's examples


def choose_class_weights(class_weights: str, counts: dict[int, int],
                         n_labels: int | None = None) -> tuple[list[float] | None, str]:
    """The weight of each label's examples in the training loss, by label index (None: every example weighs 1),
    and why, for a job's ``class_weights`` option and its training examples per label index (``counts``).
    Balanced weights are n / (labels x count): their mean over the training examples is 1, so the loss keeps its
    scale and the learning rate its meaning. ``n_labels``: the head's labels when some have no training example
    (a continued classifier trained on part of its labels); those are left out of the balance and weigh 1."""
    counts = {index: count for index, count in counts.items() if count}
    most, least = max(counts.values()), min(counts.values())
    if class_weights == "none":
        return None, "class_weights none"
    if class_weights == "auto" and most < IMBALANCE_RATIO * least:
        return None, (f"class_weights auto: the labels are near balanced (the most frequent has {most} training "
                      f"examples, the rarest {least}: under {IMBALANCE_RATIO} times)")
    n, k = sum(counts.values()), len(counts)
    weights = [n / (k * counts[index]) if index in counts else 1.0
               for index in range(n_labels if n_labels is not None else len(counts))]
    why = "class_weights balanced" if class_weights == "balanced" else (
        f"class_weights auto: the most frequent label has {most} training examples, the rarest {least} "
        f"({most / least:.1f} times)")
    return weights, why


@torch.no_grad()
def label_rows(model, tokenizer, id2label: dict[int, str]) -> torch.Tensor:
    """One row per label: the mean of the input embeddings of its name's tokens (as words when it is words,
    read mid-sentence: with a leading space), centred over the labels. Adding one vector to every row of a
    softmax head changes no probability, so the part the labels share carries nothing and is removed."""
    embeddings = model.get_input_embeddings().weight
    rows = []
    for index in sorted(id2label):
        name = id2label[index]
        ids = tokenizer(" " + (label_words(name) or name.strip() or name), add_special_tokens=False)["input_ids"]
        rows.append(embeddings[torch.tensor(ids, device=embeddings.device)].float().mean(dim=0))
    rows = torch.stack(rows)
    return rows - rows.mean(dim=0, keepdim=True)


@torch.no_grad()
def init_head_from_labels(model, tokenizer, id2label: dict[int, str]) -> None:
    """Set each row of the freshly initialised head (``load_classifier``'s ``score``) to its label's row from
    ``label_rows``, scaled to the mean norm of the random init's rows (so the step sizes the recipe was tuned
    with still fit). Before any adapter wraps the model: PEFT copies the head it finds."""
    head = model.score.weight
    target = head.float().norm(dim=1).mean()
    rows = label_rows(model, tokenizer, id2label)
    norms = rows.norm(dim=1, keepdim=True)
    rows = torch.where(norms > 0, rows / norms.clamp_min(1e-12) * target, head.float())  # identical names: keep
    head.copy_(rows.to(head.dtype))


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
