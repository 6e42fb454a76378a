"""Predictions of a fine-tuned classification model: text in, label and class probabilities out.

Loads the base model under the trained head and LoRA adapter (both in the PEFT folder), or a fully fine-tuned
classifier's own weights (``train.weights``), and uses the same
pooling as training (``train.classify``). Knows nothing about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

from tempering.catalog import get_card, load_tokenizer, resolve_weights
from tempering.errors import InvalidConfigError
from tempering.hardware import select_placement
from tempering.train import artifacts, weights
from tempering.train.classify import ClassExample, encode_inputs, load_classifier, predict


@dataclass
class Classifier:
    model_id: str
    tokenizer: object
    model: object
    labels: list[str]
    max_length: int
    input_format: str = "text"  # how the model was trained to read texts (train.classify.encode_inputs)

    def classify(self, texts: list[str]) -> list[dict]:
        """For each text: {"label", "scores": {label: probability}}, labels by descending probability."""
        return self.classify_ids(self.encode(texts))

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, as the classifier was trained to read them, cut at the context."""
        return encode_inputs(self.tokenizer, texts, self.input_format, self.max_length)

    def classify_ids(self, ids: list[list[int]]) -> list[dict]:
        """``classify`` for texts already encoded by ``encode``."""
        probabilities = predict(self.model, [ClassExample(i, 0) for i in ids], self.tokenizer.pad_token_id)
        results = []
        for row in probabilities.tolist():
            scores = dict(sorted(zip(self.labels, row), key=lambda kv: -kv[1]))
            results.append({"label": next(iter(scores)), "scores": scores})
        return results


def load_classifier_model(model_id: str, device: str = "auto") -> Classifier:
    folder, meta = artifacts.resolve_finetuned(model_id)
    if meta.get("task") != "classification":
        raise InvalidConfigError(f"{model_id} is a {meta.get('task', 'chat')} model; use `tempering chat`",
                                 param="model")
    card = get_card(meta["base_model"])
    placement = select_placement(device)
    tokenizer = load_tokenizer(card)
    labels = meta["labels"]
    model = load_classifier(resolve_weights(card), placement, dict(enumerate(labels)))
    model.config.pad_token_id = tokenizer.pad_token_id
    model = weights.load_onto(model, folder, merge=False).eval()
    return Classifier(model_id, tokenizer, model, labels, card.context_length, artifacts.stored_input_format(meta))


def load_classifier_target(target, device: str = "auto") -> Classifier:
    """A ``Classifier`` for a classification ``train.refs.Target`` (a final model or a checkpoint)."""
    if target.kind == "fine-tuned":
        return load_classifier_model(target.name, device)
    card = get_card(target.base_model)  # a checkpoint: the same assembly as above, another folder
    tokenizer = load_tokenizer(card)
    model = load_classifier(resolve_weights(card), select_placement(device), dict(enumerate(target.labels)))
    model.config.pad_token_id = tokenizer.pad_token_id
    model = weights.load_onto(model, target.adapter, merge=False).eval()
    return Classifier(target.name, tokenizer, model, target.labels, card.context_length, target.input_format)
