"""Local generation: load a base or fine-tuned model and stream its answer to a conversation.

The prompt is built by ``tempering.data.encode.encode_prompt``, the same template code training uses, so
what is served is what was trained. The decode loop is a plain KV-cached loop over token ids that yields
text chunks as soon as they are complete UTF-8 (``decode.Detokenizer``, shared with the serving engine).
Knows nothing about HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from tempering.catalog import get_card, load_causal_lm, load_tokenizer
from tempering.data.encode import encode_prompt
from tempering.errors import InvalidConfigError
from tempering.hardware import select_placement
from tempering.serve import rope
from tempering.serve.decode import Detokenizer, eos_ids, pick_token
from tempering.serve.params import Chunk, SamplingParams
from tempering.train import artifacts, weights


@dataclass
class ChatModel:
    model_id: str
    base_model: str
    tokenizer: object
    model: object
    context_length: int
    eos_ids: set[int] = field(default_factory=set)
    constrainer: object | None = None  # serve.constrain.Constrainer, made on the first constrained answer

    def matcher(self, spec: dict):
        if self.constrainer is None:
            from tempering.serve.constrain import Constrainer

            self.constrainer = Constrainer.for_model(self.tokenizer, self.model, self.eos_ids)
        return self.constrainer.matcher(spec)


def load_chat(target, device: str = "auto") -> ChatModel:
    """A ``ChatModel`` for a chat ``train.refs.Target`` (base, fine-tuned or checkpoint): the served path,
    the adapter merged."""
    if target.kind != "checkpoint":
        return load_chat_model(target.name if target.kind == "fine-tuned" else target.base_model, device)
    chat = load_chat_model(target.base_model, device)
    chat.model = weights.load_onto(chat.model, target.adapter).eval()
    chat.model_id = target.name
    return chat


def load_chat_model(model_id: str, device: str = "auto") -> ChatModel:
    """A catalog id loads the base model; a fine-tuned id loads its base plus the adapter, merged, or its own
    weights (adapter full)."""
    placement = select_placement(device)
    base_id, adapter = model_id, None
    if artifacts.is_finetuned_id(model_id):
        adapter, meta = artifacts.resolve_finetuned(model_id)
        if meta.get("task", "chat") != "chat":
            raise InvalidConfigError(f"{model_id} is a {meta['task']} model; use `tempering classify`",
                                     param="model")
        base_id = meta["base_model"]
    card = get_card(base_id)
    tokenizer = load_tokenizer(card)
    model = load_causal_lm(card, placement)
    if adapter is not None:
        # One adapter, one user: merging makes every decode step as cheap as the base model's (a fully
        # fine-tuned model's own weights are loaded over the base's).
        model = weights.load_onto(model, adapter).eval()
    return ChatModel(model_id, card.id, tokenizer, model, card.context_length, eos_ids(tokenizer, model))


@torch.inference_mode()
def generate(chat: ChatModel, messages: list[dict], params: SamplingParams | None = None) -> Iterator[Chunk]:
    """Stream the assistant's answer to ``messages`` as text chunks."""
    params = params or SamplingParams()
    prompt = encode_prompt(chat.tokenizer, messages)
    if len(prompt) >= chat.context_length:
        raise InvalidConfigError(f"the conversation is {len(prompt)} tokens; the model's context is "
                                 f"{chat.context_length}", param="messages")
    budget = min(params.max_tokens, chat.context_length - len(prompt))
    generator = None
    if params.seed is not None:
        generator = torch.Generator().manual_seed(params.seed)
    device = next(chat.model.parameters()).device
    input_ids = torch.tensor([prompt], device=device)
    cache = DynamicCache(config=chat.model.config)  # filled in place by each forward
    detok = Detokenizer(chat.tokenizer)  # holds text back while a multi-byte character is incomplete
    switch, tokens = rope.switch_length(chat.model), list(prompt)
    matcher = chat.matcher(params.response_format) if params.response_format is not None else None
    finish = "length"
    for _ in range(budget):
        if switch is not None and len(tokens) == switch + 1:  # LongRoPE: the cache holds short-factor keys
            cache, input_ids = DynamicCache(config=chat.model.config), torch.tensor([tokens], device=device)
        out = chat.model(input_ids=input_ids, cache=cache, use_cache=True)
        logits = out.logits[0, -1].cpu()
        token = pick_token(matcher.mask(logits) if matcher else logits, params, generator)
        if token in chat.eos_ids:
            finish = "stop"
            break
        tokens.append(token)
        text = detok.add(token)
        if text:
            yield Chunk(text)
        if matcher is not None:
            matcher.advance(token)
            if matcher.finished:
                finish = "stop"
                break
        input_ids = torch.tensor([[token]], device=device)
    yield Chunk(detok.flush(), finish_reason=finish)


def complete(chat: ChatModel, messages: list[dict], params: SamplingParams | None = None) -> str:
    return "".join(chunk.text for chunk in generate(chat, messages, params))
