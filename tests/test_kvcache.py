"""The engine's in-place KV cache (``serve.kvcache``) decodes exactly as transformers' ``DynamicCache`` does,
through reallocations and the engine's batch surgery, without copying the cache at every step."""

from __future__ import annotations

import pytest
import torch

from tempering.serve.decode import keep_rows, left_pad
from tempering.serve.kvcache import MIN_ROOM, GrowingCache


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def decode(model, cache, prompts, steps, surgery=None):
    """Greedy decode of left-padded ``prompts`` for ``steps`` tokens; ``surgery(step, cache, mask)`` may drop
    rows (returns the kept row indices and the new mask). Returns every step's logits."""
    ids, mask = left_pad(prompts, 0, "cpu")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    seen = []
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        for step in range(steps):
            logits = out.logits[:, -1]
            seen.append(logits.clone())
            tokens = logits.argmax(-1, keepdim=True)
            positions = positions[:, -1:] + 1
            if surgery is not None and (kept := surgery(step, cache, mask)) is not None:
                rows, mask = kept
                tokens, positions = tokens[rows], positions[rows]
            mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype)], dim=1)
            out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    return seen


def test_same_logits_as_dynamic_cache_past_reallocations(model):
    from transformers import DynamicCache

    prompts = [[5, 6, 7, 8, 9], [42, 43], [300, 301, 302, 303, 304, 305, 306, 307]]
    steps = 3 * MIN_ROOM  # several reallocations
    growing = GrowingCache()
    reference = decode(model, DynamicCache(), prompts, steps)
    seen = decode(model, growing, prompts, steps)
    for step, (a, b) in enumerate(zip(reference, seen)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=f"step {step}")
    layer = growing.layers[0]
    filled = layer.keys.shape[-2]
    assert filled == 8 + steps  # the widest prompt plus every decoded token
    assert filled <= layer.capacity() <= filled + max(MIN_ROOM, filled // 4)


def test_batch_surgery_then_appending_matches_dynamic_cache(model):
    """Dropping a row and the columns only it needed (``keep_rows``, as the engine does when an answer ends)
    assigns the layers' tensors; decoding then goes on in place and still matches."""
    from transformers import DynamicCache

    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [42, 43], [300, 301, 302]]

    def drop_first_at(step_to_drop):
        def surgery(step, cache, mask):
            if step != step_to_drop:
                return None
            return [1, 2], keep_rows(cache, mask, [1, 2], 3)
        return surgery

    reference = decode(model, DynamicCache(), prompts, 90, drop_first_at(20))
    growing = GrowingCache()
    seen = decode(model, growing, prompts, 90, drop_first_at(20))
    for step, (a, b) in enumerate(zip(reference, seen)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=f"step {step}")
    keys = growing.layers[0].keys
    assert keys.shape[0] == 2 and keys.shape[-2] == 3 + 90  # the 12-token prompt's extra columns are gone


def test_appending_writes_in_place_until_the_room_runs_out():
    cache = GrowingCache()
    first = torch.randn(2, 1, 5, 4)
    keys, _ = cache.update(first, first + 1, 0)
    layer = cache.layers[0]
    room = layer.capacity()
    assert room == 5 + MIN_ROOM and torch.equal(keys, first)
    buffer = layer._buffers["keys"]
    for i in range(room - 5):
        keys, _ = cache.update(torch.full((2, 1, 1, 4), float(i)), torch.zeros(2, 1, 1, 4), 0)
    assert layer._buffers["keys"] is buffer  # no reallocation while there was room
    assert torch.equal(keys[..., :5, :], first) and torch.equal(keys[0, 0, -1], torch.full((4,), float(room - 6)))
    cache.update(torch.ones(2, 1, 1, 4), torch.ones(2, 1, 1, 4), 0)
    assert layer._buffers["keys"] is not buffer and layer.keys.shape[-2] == room + 1
    assert torch.equal(layer.keys[..., :5, :], first)
    with pytest.raises(ValueError, match="cannot take states"):
        cache.update(torch.ones(3, 1, 1, 4), torch.ones(3, 1, 1, 4), 0)
