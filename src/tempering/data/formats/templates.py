"""Chat templates written out as text (Phi-3's ``<|user|>…<|end|>``, ChatML's ``<|im_start|>…<|im_end|>``)
parsed back into chat messages. Knows no file format and no tokenizer."""

from __future__ import annotations

import re

from tempering.data.formats.records import LineError

_PHI3_TURN = re.compile(
    r"<\|(system|user|assistant)\|>(.*?)(?:<\|end\|>|(?=<\|(?:system|user|assistant)\|>)|\Z)", re.DOTALL
)
_CHATML_TURN = re.compile(r"<\|im_start\|>([^\n<]*)\n?(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.DOTALL)
# Markers a written-out template may carry around its turns; they hold no content.
_NOISE = re.compile(r"<s>|</s>|<\|endoftext\|>|<\|end\|>|<\|im_end\|>")


def parse_template(text: str) -> list[dict]:
    """A Phi-3 (``<|user|>…<|end|>``) or ChatML (``<|im_start|>user…<|im_end|>``) text → chat messages."""
    if "<|im_start|>" in text:
        pattern, template = _CHATML_TURN, "ChatML"
    elif _PHI3_TURN.search(text):
        pattern, template = _PHI3_TURN, "Phi-3"
    else:
        raise LineError(
            (
                "no_template",
                (
                    "the text holds no Phi-3 (<|user|> … <|end|>) or ChatML "
                    "(<|im_start|>user … <|im_end|>) chat template"
                ),
            )
        )
    messages, problems, outside = [], [], []
    position = 0
    for match in pattern.finditer(text):
        outside.append(text[position : match.start()])
        position = match.end()
        role = match.group(1).strip()
        if role not in ("system", "user", "assistant"):
            problems.append(
                ("unknown_role", f"{template} turn with role {role!r}; use system, user or assistant")
            )
            continue
        messages.append({"role": role, "content": match.group(2).strip()})
    outside.append(text[position:])
    stray = _NOISE.sub("", "".join(outside)).strip()
    if stray:
        problems.append(("text_outside_turns", f"text outside the {template} turns: {stray[:60]!r}"))
    if problems:
        raise LineError(*problems)
    return messages
