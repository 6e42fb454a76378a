"""The numbers of one loaded model on a list of chat examples.

Loss-based metrics reuse ``train.loss.evaluate`` on ``data.encode.encode_chat`` (the training encoding, so the
loss is the one training reports); answers come from ``serve.local.generate`` with greedy sampling (the
serving path); classification models are scored through ``serve.classify.Classifier``. Owns turning
examples into prompts and references and counting the cost. Knows nothing about reports on disk, runs or
which model is the baseline.
"""

from __future__ import annotations

import time

from tempering.evaluate.metrics import OTHER, exact_match, final_answer, label_metrics, text_metrics, to_label
from tempering.evaluate.report import Cost, GenerationMetrics, LossMetrics


def prompt_of(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) its final assistant turn: what the model is asked."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def chat_loss(chat, examples: list[list[dict]]) -> tuple[LossMetrics, Cost]:
    """Validation loss, perplexity and mean token accuracy on assistant tokens, as training computes them."""
    from tempering.data.encode import encode_chat
    from tempering.train.batching import collate
    from tempering.train.loss import evaluate

    started = time.perf_counter()
    encoded = [encode_chat(chat.tokenizer, m) for m in examples]
    pad_id = chat.tokenizer.pad_token_id
    result = evaluate(chat.model, encoded, lambda batch: collate(batch, pad_id, chat.context_length))
    cost = Cost(seconds=time.perf_counter() - started, loss_tokens=sum(len(e) for e in encoded))
    return LossMetrics(**result, n_examples=len(encoded)), cost


def answers(chat, examples: list[list[dict]], max_new_tokens: int,
            labels: list[str] | None = None) -> tuple[list[str], int, Cost]:
    """Greedy answers through the serving path, decoded in batches: (answers, how many hit max_new_tokens,
    cost). With ``labels``, decoding is constrained to exactly one of them (structured outputs' choice), so no
    answer names none."""
    from tempering.serve.local import SamplingParams, answer_all

    choices = sorted({label.strip() for label in labels or [] if label.strip()})
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0,
                            response_format={"type": "choice", "choices": choices} if choices else None)
    started = time.perf_counter()
    answered = answer_all(chat, [prompt_of(messages) for messages in examples], params)
    cost = Cost(seconds=time.perf_counter() - started, prompt_tokens=sum(a.prompt_tokens for a in answered),
                generated_tokens=sum(a.tokens for a in answered))
    return [a.text.strip() for a in answered], sum(a.finish_reason == "length" for a in answered), cost


def generation_metrics(texts: list[str], examples: list[list[dict]], labels: list[str] | None,
                       truncated: int = 0) -> GenerationMetrics:
    """Exact match always; label metrics when ``labels`` is given, else ROUGE-L and answer length."""
    references = [final_answer(m) for m in examples]
    metrics = GenerationMetrics(n=len(texts), exact_match=exact_match(texts, references), truncated=truncated)
    if labels is not None:
        metrics.labels = label_metrics(references, [to_label(t, labels) for t in texts],
                                       sorted(set(labels) | set(references)))
    elif texts:
        metrics.text = text_metrics(texts, references)
    return metrics


def classifier_metrics(classifier, texts: list[str], labels: list[str], with_loss: bool = True):
    """(label metrics, loss metrics or None, predicted labels, cost) of a ``serve.classify.Classifier``.

    The loss is over the examples whose label the model knows; an unknown true label counts as a miss."""
    from tempering.train.classify import ClassExample, classification_loss, collate_classes
    from tempering.train.loss import evaluate

    started = time.perf_counter()
    predicted = [r["label"] for r in classifier.classify(texts)] if texts else []
    metrics = label_metrics(labels, predicted, sorted(set(classifier.labels) | set(labels)))
    loss = None
    ids = classifier.encode(texts) if texts else []
    if with_loss:
        label2id = {label: i for i, label in enumerate(classifier.labels)}
        known = [ClassExample(i, label2id[y]) for i, y in zip(ids, labels) if y in label2id]
        pad_id = classifier.tokenizer.pad_token_id
        result = evaluate(classifier.model, known, lambda batch: collate_classes(batch, pad_id),
                          classification_loss)
        loss = LossMetrics(**result, n_examples=len(known))
    cost = Cost(seconds=time.perf_counter() - started, loss_tokens=sum(len(i) for i in ids))
    return metrics, loss, [p if p in classifier.labels else OTHER for p in predicted], cost
