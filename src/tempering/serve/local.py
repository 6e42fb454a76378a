"""Local generation: load a base or fine-tuned model and stream its answer to a conversation.

The prompt is built by ``tempering.data.encode.encode_prompt``, the same template code training uses, so
what is served is what was trained. The decode loop is a plain KV-cached loop over token ids that yields
text chunks as soon as they are complete UTF-8 (``decode.Detokenizer``, shared with the serving engine).
Knows nothing about HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from transformers import DynamicCache

from tempering.catalog import get_card, load_causal_lm, load_tokenizer
from tempering.data.encode import encode_prompt
from tempering.errors import InvalidConfigError
from tempering.hardware import select_placement
from tempering.serve import rope
from tempering.serve.decode import Detokenizer, eos_ids, keep_rows, left_pad, pick_token
from tempering.serve.kvcache import GrowingCache
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


def _prompt(chat: ChatModel, messages: list[dict]) -> list[int]:
    prompt = encode_prompt(chat.tokenizer, messages)
    if len(prompt) >= chat.context_length:
        raise InvalidConfigError(f"the conversation is {len(prompt)} tokens; the model's context is "
                                 f"{chat.context_length}", param="messages")
    return prompt


@torch.inference_mode()
def generate(chat: ChatModel, messages: list[dict], params: SamplingParams | None = None) -> Iterator[Chunk]:
    """Stream the assistant's answer to ``messages`` as text chunks."""
    params = params or SamplingParams()
    prompt = _prompt(chat, messages)
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
        out = chat.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)  # the last only
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


class Answer(NamedTuple):
    text: str
    finish_reason: str  # "stop" or "length"
    tokens: int  # tokens generated (an end-of-turn token not counted)
    prompt_tokens: int  # the prompt's tokens (the chat template's encoding)


def answer_all(chat: ChatModel, conversations: list[list[dict]], params: SamplingParams | None = None,
               batch_size: int = 16, batch_tokens: int = 8192) -> list[Answer]:
    """The answers to many conversations, in order: what ``generate`` answers each alone, decoded up to
    ``batch_size`` at a time in one left-padded batch (prompts of similar length together; a batch's rows times
    its longest prompt plus the answer budget at most ``batch_tokens``, which bounds its KV cache), as the
    serving engine decodes.
    Evaluations answer dozens of prompts with each model; one at a time, a CPU spends each decode step reading
    every weight for a single row. A seeded sampler and LongRoPE models (whose factors switch by length) go one
    by one through ``generate``. Greedy answers can differ from ``generate``'s where two tokens are nearly
    tied (padding changes the matrix shapes, so the last bits of the logits)."""
    params = params or SamplingParams()
    if params.seed is not None or rope.switch_length(chat.model) is not None:
        answers = []
        for messages in conversations:
            chunks = list(generate(chat, messages, params))
            text = "".join(c.text for c in chunks)
            answers.append(Answer(text, chunks[-1].finish_reason,
                                  len(chat.tokenizer(text, add_special_tokens=False)["input_ids"]),
                                  len(encode_prompt(chat.tokenizer, messages))))
        return answers
    prompts = [_prompt(chat, messages) for messages in conversations]
    groups: list[list[int]] = []
    for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):  # a group's last prompt is its longest
        if groups and len(groups[-1]) < batch_size and \
                (len(groups[-1]) + 1) * (len(prompts[i]) + params.max_tokens) <= batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    answers: list[Answer | None] = [None] * len(prompts)
    for group in groups:
        for i, answer in zip(group, _decode_batch(chat, [prompts[i] for i in group], params), strict=True):
            answers[i] = answer
    return answers


@torch.inference_mode()
def _decode_batch(chat: ChatModel, prompts: list[list[int]], params: SamplingParams) -> list[Answer]:
    """Decode ``prompts`` together: one left-padded prefill, then a token per row per step, a row leaving the
    batch (its cache rows and the columns no other row needs dropped) when its answer ends."""
    device = next(chat.model.parameters()).device
    ids, mask = left_pad(prompts, chat.tokenizer.pad_token_id or 0, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # full-length cache layers, as the engine keeps them: columns are dropped by the mask, which a sliding
    # layer's own window could not follow (the model applies a window through its attention mask); appended in
    # place (serve.kvcache)
    cache = GrowingCache()
    matchers = [chat.matcher(params.response_format) if params.response_format is not None else None
                for _ in prompts]
    budgets = [min(params.max_tokens, chat.context_length - len(p)) for p in prompts]
    tokens: list[list[int]] = [[] for _ in prompts]
    finish = ["length"] * len(prompts)
    rows = list(range(len(prompts)))  # the prompt each batch row answers
    while rows:
        out = chat.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                         logits_to_keep=1)  # a prefill needs the last position's logits only, not the prompt's
        logits = out.logits[:, -1].float().cpu()
        going, pending = [], []
        for b, i in enumerate(rows):
            matcher = matchers[i]
            token = pick_token(matcher.mask(logits[b]) if matcher else logits[b], params, None)
            if token in chat.eos_ids:
                finish[i] = "stop"
                continue
            tokens[i].append(token)
            if matcher is not None:
                matcher.advance(token)
                if matcher.finished:
                    finish[i] = "stop"
                    continue
            if len(tokens[i]) < budgets[i]:
                going.append(b)
                pending.append(token)
        if not going:
            break
        mask = keep_rows(cache, mask, going, len(rows))
        rows = [rows[b] for b in going]
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long, device=device)], dim=1)
        ids = torch.tensor([[token] for token in pending], device=device)
        positions = torch.tensor([[len(prompts[i]) + len(tokens[i]) - 1] for i in rows], device=device)
    answers = []
    for i in range(len(prompts)):
        detok = Detokenizer(chat.tokenizer)
        text = "".join(detok.add(token) for token in tokens[i]) + detok.flush()
        answers.append(Answer(text, finish[i], len(tokens[i]), len(prompts[i])))
    return answers
