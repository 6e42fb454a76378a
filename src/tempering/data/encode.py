"""Chat examples → token ids and loss labels, through the model's own chat template.

Owns the one rule that training, validation token counts and serving must share: a conversation is
rendered with the tokenizer's chat template and tokenized as a whole, and loss is carried by exactly the
tokens of assistant messages whose weight is 1 (their content and the end-of-turn marker), never by the
system/user turns or the ``<|im_start|>assistant\\n``-style header the model is prompted with.
Knows nothing about model weights or training.
"""

from __future__ import annotations

from dataclasses import dataclass

from tempering.errors import TemperingError

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


def _template_messages(messages: list[dict]) -> list[dict]:
    """Only role and content reach the template; ``weight`` and ``name`` are Tempering's business."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        _template_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation followed by the assistant header: what a served model continues."""
    text = render(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _turn_end(tokenizer, messages: list[dict]) -> str:
    """The rendering of ``messages`` up to the end-of-turn marker of the last (assistant) one.

    The trailing newline after the marker carries no loss. Neither does an EOS token that a template appends
    only to close the whole conversation (Phi-3: ``…<|end|>\\n<|endoftext|>``, while a next turn follows
    ``<|end|>\\n`` directly): a turn is trained the same wherever it stands, and multi-turn conversations
    stay prefixes of each other. An EOS that ends every turn (Llama 2, Mistral) stays trained."""
    closed = render(tokenizer, messages).rstrip()
    eos = tokenizer.eos_token
    if eos and closed.endswith(eos):
        continued = render(tokenizer, [*messages, {"role": "user", "content": "?"}])
        if not continued.startswith(closed):
            closed = closed[: -len(eos)].rstrip()
    return closed


def _trained_spans(tokenizer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """Character spans of ``full`` that carry loss: each weight-1 assistant message and its end marker."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _turn_end(tokenizer, messages[: i + 1])
        if not (full.startswith(prompt) and full.startswith(upto) and len(prompt) <= len(upto)):
            raise TemperingError(
                "the model's chat template renders a conversation differently from its prefixes, so "
                "the assistant tokens cannot be located; this template is not supported for training",
                code="unsupported_chat_template",
            )
        spans.append((len(prompt), len(upto)))
    return spans


def encode_chat(tokenizer, messages: list[dict]) -> EncodedExample:
    full = render(tokenizer, messages)
    spans = _trained_spans(tokenizer, messages, full)
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for j, (s, e) in enumerate(encoding["offset_mapping"]):
        if any(s < end and e > start for start, end in spans):
            labels[j] = input_ids[j]
    return EncodedExample(input_ids=input_ids, labels=labels)
