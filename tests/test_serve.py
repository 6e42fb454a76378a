"""Generation: the decode loop gives what transformers' own greedy generate gives, and stops correctly."""

from __future__ import annotations

import torch

from tempering.data import encode_prompt
from tempering.serve import SamplingParams, generate, load_chat_model

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]


def test_greedy_matches_transformers_generate(tiny_model):
    chat = load_chat_model(tiny_model)
    chunks = list(generate(chat, MESSAGES, SamplingParams(max_tokens=12)))
    prompt = torch.tensor([encode_prompt(chat.tokenizer, MESSAGES)])
    reference = chat.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                                    do_sample=False, eos_token_id=sorted(chat.eos_ids),
                                    pad_token_id=chat.tokenizer.pad_token_id)
    new_tokens = [t for t in reference[0, prompt.shape[1]:].tolist() if t not in chat.eos_ids]
    assert "".join(c.text for c in chunks) == chat.tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert chunks[-1].finish_reason == ("length" if len(new_tokens) == 12 else "stop")
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_sampling_is_reproducible_with_a_seed(tiny_model):
    chat = load_chat_model(tiny_model)
    params = SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=11)
    first = "".join(c.text for c in generate(chat, MESSAGES, params))
    assert first == "".join(c.text for c in generate(chat, MESSAGES, params))


def test_stops_at_end_of_turn(tiny_model):
    chat = load_chat_model(tiny_model)
    eos = chat.tokenizer.eos_token_id
    head = chat.model.get_output_embeddings()
    # a head that always predicts the end-of-turn token
    head.forward = lambda h: torch.nn.functional.one_hot(torch.full(h.shape[:-1], eos), head.out_features).float()
    chunks = list(generate(chat, MESSAGES, SamplingParams(max_tokens=5)))
    assert [(c.text, c.finish_reason) for c in chunks] == [("", "stop")]
