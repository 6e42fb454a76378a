"""Loss masking: exactly the tokens of weight-1 assistant messages carry loss; serving uses the same ids."""

from __future__ import annotations

from tempering.data import IGNORE_INDEX, encode_chat, encode_prompt

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue, like the sky.", "weight": 0},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green."},
    {"role": "user", "content": "And a third?"},
    {"role": "assistant", "content": "Red, the colour of apples."},
]


def _trained_runs(tokenizer, encoded) -> list[str]:
    """Decoded text of each contiguous run of loss-carrying tokens."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_only_weighted_assistant_tokens_carry_loss(tokenizer):
    encoded = encode_chat(tokenizer, CONVERSATION)
    end = tokenizer.eos_token  # <|im_end|> for the ChatML template
    assert _trained_runs(tokenizer, encoded) == [f"Green.{end}", f"Red, the colour of apples.{end}"]
    assert encoded.labels[0] == IGNORE_INDEX


def test_all_weights_one_trains_every_assistant_turn(tokenizer):
    conversation = [{k: v for k, v in m.items() if k != "weight"} for m in CONVERSATION]
    runs = _trained_runs(tokenizer, encode_chat(tokenizer, conversation))
    assert [r.removesuffix(tokenizer.eos_token) for r in runs] == [
        "Blue, like the sky.", "Green.", "Red, the colour of apples."
    ]


def test_served_prompt_is_the_trained_prefix_token_for_token(tokenizer):
    encoded = encode_chat(tokenizer, CONVERSATION)
    prompt = encode_prompt(tokenizer, CONVERSATION[:-1])
    assert encoded.input_ids[: len(prompt)] == prompt
    # and the first trained token is exactly the first token the served model must produce
    first_trained = next(i for i, label in enumerate(encoded.labels[len(prompt) - 1 :]) if label != IGNORE_INDEX)
    assert first_trained + len(prompt) - 1 == len(prompt)
