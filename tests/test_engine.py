"""The serving engine: continuous batching and many adapters on one base model give, for every request, what
that request would get alone on the same model with its adapter merged (greedy decoding)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tempering.serve.params import SamplingParams

PROMPTS = [[1, 17, 256, 980], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [42], [300, 301, 302, 303, 304, 305]]


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights: changes the model's answers without training."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                        init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_model_dir, root / f"adapter-{i}", seed=i) for i in range(3)]


def alone(model_dir: Path, adapter: Path | None, prompt: list[int], max_tokens: int) -> list[int]:
    """The reference: transformers' own greedy generate on the merged model, one request at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                         min_new_tokens=max_tokens, pad_token_id=0)  # never stop early: compare whole sequences
    return out[0, len(prompt):].tolist()


async def collect(engine, prompt, params, adapter=None):
    chunks = [c async for c in engine.generate(prompt, params, adapter)]
    return chunks


def token_ids(chunks) -> list[int]:
    return [lp.token_id for c in chunks for lp in c.logprobs]


@pytest.fixture
def engine(tiny_model):
    from tempering.serve.engine import TransformersEngine

    engine = TransformersEngine(tiny_model, max_batch=8, max_adapters=8, threads=1)
    yield engine
    engine.stop()


def no_eos(engine):
    engine.wait_ready()
    engine.eos_ids = set()  # random weights: compare full-length sequences, never an early end of turn


def test_batched_mixed_adapters_match_each_request_alone(engine, tiny_model_dir, adapters):
    no_eos(engine)
    params = SamplingParams(max_tokens=12, logprobs=True)
    jobs = [(prompt, adapter) for prompt in PROMPTS for adapter in (None, *adapters[:2])]

    async def run_all():
        return await asyncio.gather(*(collect(engine, p, params, a) for p, a in jobs))

    results = asyncio.run(run_all())
    assert engine.steps < sum(len(token_ids(r)) for r in results)  # they really shared forward passes
    assert engine.prefill_passes < len(jobs)  # and prompts of different lengths were prefilled together
    assert engine.adapters.lean  # plain LoRA adapters: applied by serve.lora, two products per layer
    for (prompt, adapter), chunks in zip(jobs, results):
        assert token_ids(chunks) == alone(tiny_model_dir, adapter, prompt, 12), (prompt, adapter)
        assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 12


def test_adapters_peft_cannot_stack_fall_back_to_peft(engine, tiny_model_dir, adapters, tmp_path):
    """A DoRA adapter is beyond serve.lora: the engine goes back to PEFT's forward, answers still exact."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], use_dora=True,
                        init_lora_weights=False)
    dora = tmp_path / "dora"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(dora)
    no_eos(engine)
    params = SamplingParams(max_tokens=6, logprobs=True)

    async def run():
        return await asyncio.gather(*(collect(engine, PROMPTS[0], params, a) for a in (adapters[0], dora, None)))

    lora_answer, dora_answer, base_answer = (token_ids(r) for r in asyncio.run(run()))
    assert not engine.adapters.lean
    assert lora_answer == alone(tiny_model_dir, adapters[0], PROMPTS[0], 6)
    assert dora_answer == alone(tiny_model_dir, dora, PROMPTS[0], 6)
    assert base_answer == alone(tiny_model_dir, None, PROMPTS[0], 6)


def test_adapters_change_the_answer(engine, adapters):
    no_eos(engine)
    params = SamplingParams(max_tokens=8, logprobs=True)
    answers = [token_ids(asyncio.run(collect(engine, PROMPTS[1], params, a))) for a in (None, *adapters)]
    assert len({tuple(a) for a in answers}) == len(answers)


def test_adapters_are_evicted_least_recently_used(tiny_model, tiny_model_dir, adapters):
    from tempering.serve.engine import TransformersEngine, adapter_name

    engine = TransformersEngine(tiny_model, max_adapters=2, threads=1)
    try:
        no_eos(engine)
        params = SamplingParams(max_tokens=4, logprobs=True)
        for adapter in adapters:  # three adapters through a two-slot engine
            assert token_ids(asyncio.run(collect(engine, PROMPTS[0], params, adapter))) == \
                alone(tiny_model_dir, adapter, PROMPTS[0], 4)
        assert list(engine.adapters._adapters) == [adapter_name(a) for a in adapters[1:]]
        # the evicted one reloads and still gives its own answer
        assert token_ids(asyncio.run(collect(engine, PROMPTS[0], params, adapters[0]))) == \
            alone(tiny_model_dir, adapters[0], PROMPTS[0], 4)
    finally:
        engine.stop()


def test_a_caller_that_goes_away_leaves_the_batch(engine):
    no_eos(engine)

    async def scenario():
        short = engine.generate(PROMPTS[0], SamplingParams(max_tokens=200))
        async for _ in short:
            break
        await short.aclose()
        full = await collect(engine, PROMPTS[1], SamplingParams(max_tokens=6))
        return full

    full = asyncio.run(scenario())
    assert full[-1].finish_reason == "length"
    deadline = time.monotonic() + 5  # the engine retires rows after handing out the step's chunks
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.active == [] and engine._cache is None


def test_stopping_the_engine_fails_what_it_was_serving(engine):
    """A sequence decoding when the engine stops gets an error instead of waiting for ever, and so does a
    request made afterwards."""
    from tempering.serve.engine import EngineError

    no_eos(engine)

    async def scenario():
        stream = engine.generate(PROMPTS[1], SamplingParams(max_tokens=100_000))
        first = await anext(stream)
        await asyncio.to_thread(engine.stop)
        with pytest.raises(EngineError, match="stopped"):
            async for _ in stream:
                pass
        with pytest.raises(EngineError, match="stopped"):
            await collect(engine, PROMPTS[0], SamplingParams(max_tokens=2))
        return first

    assert asyncio.run(scenario()).finish_reason is None


def test_logprobs_and_top_logprobs(engine):
    no_eos(engine)
    chunks = asyncio.run(collect(engine, PROMPTS[0], SamplingParams(max_tokens=3, logprobs=True, top_logprobs=5)))
    steps = [lp for c in chunks for lp in c.logprobs]
    assert len(steps) == 3
    for lp in steps:
        assert len(lp.top) == 5 and lp.top[0].logprob >= lp.logprob  # greedy: the pick is the likeliest
        assert lp.top[0].token_id == lp.token_id and lp.logprob <= 0


def test_seeded_sampling_is_reproducible_in_a_batch(engine):
    no_eos(engine)
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=7, logprobs=True)

    async def run():
        return await asyncio.gather(*(collect(engine, PROMPTS[i % 2], params) for i in range(4)))

    first, second = asyncio.run(run()), asyncio.run(run())
    assert [token_ids(r) for r in first] == [token_ids(r) for r in second]
    assert token_ids(first[0]) == token_ids(first[2])  # same prompt, same seed, different batch rows


def test_prompt_longer_than_the_context_is_refused(engine):
    from tempering.errors import InvalidConfigError

    engine.wait_ready()
    with pytest.raises(InvalidConfigError, match="context"):
        asyncio.run(collect(engine, [1] * (engine.context_length + 1), SamplingParams()))


def test_int8_weights_serve_close_to_float_with_adapters(tiny_model, adapters):
    """Weight-only int8 (TEMPERING_SERVE_QUANTIZE=int8): PEFT wraps the int8 layers, adapters still apply,
    and the first token's log-probabilities stay within 0.15 of float32's (bf16 activations, int8 weights)."""
    from tempering.serve.engine import TransformersEngine
    from tempering.serve.quantize import Int8Linear

    float_engine = TransformersEngine(tiny_model, threads=1)
    int8_engine = TransformersEngine(tiny_model, threads=1, quantize="int8")
    try:
        for engine in (float_engine, int8_engine):
            no_eos(engine)
        assert isinstance(int8_engine.model.model.layers[0].self_attn.q_proj, Int8Linear)
        params = SamplingParams(max_tokens=1, logprobs=True, top_logprobs=5)
        for adapter in (None, adapters[0]):
            exact = asyncio.run(collect(float_engine, PROMPTS[1], params, adapter))[0].logprobs[0]
            close = asyncio.run(collect(int8_engine, PROMPTS[1], params, adapter))[0].logprobs[0]
            assert close.token_id == exact.token_id
            assert [t.logprob for t in close.top] == pytest.approx([t.logprob for t in exact.top], abs=0.15)
        answers = [token_ids(asyncio.run(collect(int8_engine, PROMPTS[1], SamplingParams(max_tokens=6, logprobs=True),
                                                 a))) for a in (None, adapters[0])]
        assert answers[0] != answers[1]
    finally:
        float_engine.stop()
        int8_engine.stop()


def test_int4_weights_serve_with_adapters(tiny_model, adapters):
    """Weight-only int4 in groups of 32 (TEMPERING_SERVE_QUANTIZE=int4): PEFT wraps the int4 layers and the
    adapter still changes the answer; each layer's output stays within 10 % of float32's largest value."""
    import torch

    from tempering.serve.engine import TransformersEngine
    from tempering.serve.quantize import Int4Linear, Int8Linear, tensor_bytes

    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96)
    x = torch.randn(3, 64)
    assert (Int4Linear(layer)(x) - layer(x)).abs().max() < 0.1 * layer(x).abs().max()
    # the memory an engine reports: float32 weight and bias; int8: a byte a weight, a bf16 scale per row, float
    # bias; int4: half a byte a weight, a bf16 scale and zero per group of 32 (the packed layout's own size)
    assert tensor_bytes(layer) == (96 * 64 + 96) * 4
    assert tensor_bytes(Int8Linear(layer)) == 96 * 64 + 96 * 2 + 96 * 4
    assert tensor_bytes(Int4Linear(layer)) == 96 * 64 // 2 + 96 * 2 * 2 * 2 + 96 * 4
    engine = TransformersEngine(tiny_model, threads=1, quantize="int4")
    try:
        no_eos(engine)
        assert isinstance(engine.model.model.layers[0].self_attn.q_proj, Int4Linear)
        answers = [token_ids(asyncio.run(collect(engine, PROMPTS[1], SamplingParams(max_tokens=6, logprobs=True),
                                                 a))) for a in (None, adapters[0])]
        assert len(answers[0]) == 6 and answers[0] != answers[1]
    finally:
        engine.stop()


@pytest.mark.parametrize("model", ["tiny_model", "tiny_phi3"])
def test_batched_answers_are_each_answer_alone(model, request):
    """``serve.local.answer_all`` (what evaluations answer with) decodes prompts of different lengths in
    left-padded batches, rows leaving as their answers end, and gives each the answer ``generate`` gives it
    alone: free text to the token budget or to an end token met at different steps, and label choices."""
    from tempering.data.encode import encode_prompt
    from tempering.serve import load_chat_model
    from tempering.serve.local import answer_all, generate

    chat = load_chat_model(request.getfixturevalue(model))
    ends = chat.eos_ids
    conversations = [[{"role": "user", "content": "word " * n}] for n in (1, 9, 3, 14, 12)]

    def compare(params, eos_ids):
        chat.eos_ids = eos_ids
        alone = []
        for messages in conversations:
            chunks = list(generate(chat, messages, params))
            alone.append(("".join(c.text for c in chunks), chunks[-1].finish_reason))
        together = answer_all(chat, conversations, params, batch_size=3)
        assert [(a.text, a.finish_reason) for a in together] == alone
        return together

    # random weights: free text to the budget first, then ending at a token the first answer holds
    free = compare(SamplingParams(max_tokens=7, temperature=0), set())
    assert all(a.tokens == 7 and a.finish_reason == "length" for a in free)
    # a context that leaves the longer prompts less room: their rows leave the batch at earlier steps
    longest = max(len(encode_prompt(chat.tokenizer, m)) for m in conversations)
    chat.context_length, full = longest + 4, chat.context_length
    ended = compare(SamplingParams(max_tokens=7, temperature=0), set())
    assert {a.tokens for a in ended} == {4, 6, 7}  # 14 and 12 words: 4 and 6 tokens of room
    chat.context_length = full
    choice = {"type": "choice", "choices": ["no", "yes indeed", "perhaps, in a way"]}
    chosen = compare(SamplingParams(max_tokens=12, temperature=0, response_format=choice), ends)
    assert all(a.text in choice["choices"] and a.finish_reason == "stop" for a in chosen)


def test_every_engine_computes_on_the_one_compute_thread(tiny_model, tiny_phi3):
    """Two engines (two base models) load and decode on the process's one compute thread (serve.compute): with
    a thread each, OpenMP gave each its own team and every decode step got slower (1.7x, measured)."""
    import threading

    from tempering.serve.engine import TransformersEngine

    engines = [TransformersEngine(m, max_batch=4, threads=1) for m in (tiny_model, tiny_phi3)]
    seen: set[str] = set()
    try:
        for engine in engines:
            no_eos(engine)
            engine.model.register_forward_pre_hook(lambda *_: seen.add(threading.current_thread().name))

        async def both():
            params = SamplingParams(max_tokens=5, temperature=0, logprobs=True)
            return await asyncio.gather(*(collect(e, PROMPTS[1], params) for e in engines))

        answers = asyncio.run(both())
        assert [len(token_ids(a)) for a in answers] == [5, 5]
        assert len(seen) == 1 and seen.pop().startswith("tempering-compute")
    finally:
        for engine in engines:
            engine.stop()
