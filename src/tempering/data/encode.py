"""Chat examples → token ids and loss labels, through the model's own chat template.

Owns the one rule that training, validation token counts and serving must share: a conversation is
rendered with the tokenizer's chat template and tokenized as a whole, and loss is carried by exactly the
tokens of assistant messages whose weight is 1 (their content and the end-of-turn marker), never by the
system/user turns or the ``<|im_start|>assistant\\n``-style header the model is prompted with.

A message's content is text: a special token's spelling inside it (``<|im_end|>``, ``<|user|>``) is read as the
characters it is, never as the token, so no message can end its own turn or forge another role's (as the
tokenizer alone would: it reads special tokens wherever their spelling appears).
Knows nothing about model weights or training.
"""

from __future__ import annotations

import re
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
    return _tokenize(tokenizer, messages, text, add_generation_prompt=True)[0]


_MARK = re.compile("\ue000(\\d+)\ue001")  # a placeholder for message i's content (private-use characters)


def _special_tokens(tokenizer) -> dict[str, int]:
    """The tokenizer's special tokens, spelling → id (the added ones marked special, and the named ones)."""
    tokens = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return tokens | dict(zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True))


def _content_spans(tokenizer, messages: list[dict], full: str, add_generation_prompt: bool):
    """The character span of each message's content in ``full``, found by rendering the conversation with a
    placeholder for each content; None when the template does not insert contents verbatim (it trims or
    rewrites them), so their place cannot be known."""
    marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(_template_messages(messages))]
    parts = _MARK.split(render(tokenizer, marked, add_generation_prompt=add_generation_prompt))
    spans, cursor = [], 0
    for k in range(0, len(parts) - 1, 2):
        piece, content = parts[k], messages[int(parts[k + 1])]["content"]
        if not full.startswith(piece, cursor) or not full.startswith(content, cursor + len(piece)):
            return None
        cursor += len(piece)
        spans.append((cursor, cursor + len(content)))
        cursor += len(content)
    return spans if full[cursor:] == parts[-1] else None


def _tokenize(tokenizer, messages: list[dict], full: str,
              add_generation_prompt: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``full`` (``messages`` rendered) and each one's character span; a special token spelled
    inside a message's content is replaced by the tokens of its characters (see the module's docstring)."""
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]
    special = _special_tokens(tokenizer)
    spelled = [(i, name) for i, m in enumerate(messages) if isinstance(m.get("content"), str)
               for name in special if name in m["content"]]
    if not spelled:
        return ids, offsets
    spans = _content_spans(tokenizer, messages, full, add_generation_prompt)
    if spans is None:
        index, name = spelled[0]
        raise TemperingError(f"messages[{index}].content holds {name!r}, the spelling of one of the model's special "
                             "tokens, and this model's chat template changes message contents, so it cannot be "
                             "read as text; remove it", param=f"messages[{index}].content", code="invalid_value")
    special_ids = set(special.values())
    out_ids, out_offsets = [], []
    for token, (start, end) in zip(ids, offsets, strict=True):
        if token in special_ids and any(a <= start and end <= b for a, b in spans):
            literal = tokenizer(full[start:end], add_special_tokens=False, split_special_tokens=True)["input_ids"]
            out_ids += literal
            out_offsets += [(start, end)] * len(literal)
        else:
            out_ids.append(token)
            out_offsets.append((start, end))
    return out_ids, out_offsets


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
    input_ids, offsets = _tokenize(tokenizer, messages, full, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(input_ids)
    for j, (s, e) in enumerate(offsets):
        if any(s < end and e > start for start, end in spans):
            labels[j] = input_ids[j]
    return EncodedExample(input_ids=input_ids, labels=labels)
