"""Phi-3, the seed's own model family, end to end on a tiny random Phi-3 (``tiny_phi3`` in conftest).

Phi-3 differs from the tiny Llama the rest of the suite runs on exactly where bugs hide: fused ``qkv_proj`` and
``gate_up_proj`` projections (LoRA targets, serve.lora's stacked products, merging), an untied LM head, its chat
template and special tokens (``<|user|>``, ``<|assistant|>``, ``<|end|>``, ``<|endoftext|>``), a sliding-window
config, and LongRoPE on the 128k variants. Every path runs here: catalog, data, training, serving, export.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from conftest import PHI3_ID, chat_example, save_tiny_phi3, write_jsonl
from safetensors.torch import load_file
from test_engine import PROMPTS, alone, collect, no_eos, token_ids
from test_resume import _assert_same_result, _only_unfinished_run
from test_resume import _config as _resume_config
from typer.testing import CliRunner

from tempering.data import IGNORE_INDEX, encode_chat, encode_prompt
from tempering.serve.params import SamplingParams
from tempering.train import TuneConfig, tune
from tempering.train.artifacts import resolve_finetuned

runner = CliRunner()
FUSED = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")  # every linear layer of a Phi-3 decoder layer
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue, like the sky.", "weight": 0},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green."},
    {"role": "user", "content": "And a third?"},
    {"role": "assistant", "content": "Red, the colour of apples."},
]


def _cli(*args):
    from tempering.cli.main import app

    return runner.invoke(app, [str(a) for a in args])


def _magic_file(tmp_path: Path, n: int = 12) -> Path:
    rows = [chat_example(f"Say the magic word number {i}.", f"Abracadabra {i}!") for i in range(n)]
    return write_jsonl(tmp_path / "magic.jsonl", rows)


def _tune(model: str, path: Path, **overrides):
    settings = {"seed": 3, "evaluate": False,
                "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 10.0}}
    return tune(TuneConfig(model=model, training_file=path, validation_file=path, **{**settings, **overrides}))


# ---------------------------------------------------------------- catalog


def test_add_path_puts_the_tiny_phi3_behind_the_phi3_card(tiny_phi3_dir):
    """``tempering models add-path`` on the built-in card: the card keeps its facts, the weights are the folder's,
    and the loaders give a Phi-3 with its own tokenizer (the code path a real download takes)."""
    from transformers import Phi3ForCausalLM

    from tempering.catalog import get_card, load_causal_lm, load_tokenizer, model_status, resolve_weights

    result = _cli("models", "add-path", PHI3_ID, tiny_phi3_dir)
    assert result.exit_code == 0, result.output
    card = get_card(PHI3_ID)
    assert (card.family, card.source, card.context_length) == ("phi3", "huggingface", 4096)
    assert card.hf_repo == "microsoft/Phi-3-mini-4k-instruct" and card.local_path == tiny_phi3_dir.resolve()
    assert resolve_weights(card) == tiny_phi3_dir.resolve() and model_status(card) == "ready"
    listed = next(m for m in json.loads(_cli("models", "list", "--json").stdout) if m["id"] == PHI3_ID)
    assert listed["status"] == "ready" and listed["family"] == "phi3"
    tokenizer = load_tokenizer(PHI3_ID)
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|endoftext|>"
    assert "<|assistant|>" in tokenizer.chat_template
    model = load_causal_lm(PHI3_ID)
    assert isinstance(model, Phi3ForCausalLM) and not model.training
    assert hasattr(model.model.layers[0].self_attn, "qkv_proj") and hasattr(model.model.layers[0].mlp, "gate_up_proj")


def test_a_phi3_in_the_hugging_face_cache_is_found_without_add_path(tiny_phi3_dir, tmp_path, monkeypatch):
    """The other way real weights arrive: ``hf download`` into the cache. Same loaders, no registration."""
    import shutil

    import huggingface_hub.constants

    from tempering.catalog import get_card, load_causal_lm, resolve_weights

    repo = tmp_path / "hub" / "models--microsoft--Phi-3-mini-4k-instruct"
    shutil.copytree(tiny_phi3_dir, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    card = get_card(PHI3_ID)
    assert card.local_path is None and resolve_weights(card) == repo / "snapshots" / ("0" * 40)
    assert type(load_causal_lm(card)).__name__ == "Phi3ForCausalLM"


@pytest.mark.parametrize("model_id", ["phi-3-mini-4k-instruct", "phi-3-mini-128k-instruct", "phi-3.5-mini-instruct",
                                      "phi-3-medium-4k-instruct"])
def test_absent_phi3_weights_name_the_exact_download_command(model_id):
    from tempering.catalog import get_card, resolve_weights
    from tempering.errors import ModelUnavailableError

    card = get_card(model_id)
    with pytest.raises(ModelUnavailableError) as info:
        resolve_weights(card)
    message = info.value.message
    assert f"hf download {card.hf_repo} --local-dir {model_id}" in message
    assert f"tempering models add-path {model_id} /path/to/{model_id}" in message
    result = _cli("models", "prepare", model_id)
    assert result.exit_code == 1 and f"hf download {card.hf_repo}" in result.output


# ---------------------------------------------------------------- data


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


def test_phi3_template_renders_as_phi3_does(phi3_tok):
    from tempering.data.encode import render

    text = render(phi3_tok, CONVERSATION[:3])
    assert text == ("<|system|>\nBe brief.<|end|>\n<|user|>\nName a colour.<|end|>\n"
                    "<|assistant|>\nBlue, like the sky.<|end|>\n<|endoftext|>")
    for token in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"):
        assert len(phi3_tok(token, add_special_tokens=False)["input_ids"]) == 1  # one special token each


def test_loss_only_on_assistant_turns_through_end_of_turn(phi3_tok):
    """Weight-1 assistant turns and their ``<|end|>`` carry loss; the conversation-closing ``<|endoftext|>`` does
    not (it is not what ends a turn), and a multi-turn conversation encodes at all (it used to be refused)."""
    encoded = encode_chat(phi3_tok, CONVERSATION)
    assert _trained_runs(phi3_tok, encoded) == ["Green.<|end|>", "Red, the colour of apples.<|end|>"]
    assert encoded.input_ids[-1] == phi3_tok.convert_tokens_to_ids("<|endoftext|>")
    assert encoded.labels[-1] == IGNORE_INDEX and encoded.labels[0] == IGNORE_INDEX
    every = encode_chat(phi3_tok, [{k: v for k, v in m.items() if k != "weight"} for m in CONVERSATION])
    assert _trained_runs(phi3_tok, every) == ["Blue, like the sky.<|end|>", "Green.<|end|>",
                                             "Red, the colour of apples.<|end|>"]


def test_served_prompt_is_the_trained_prefix_token_for_token(phi3_tok):
    encoded = encode_chat(phi3_tok, CONVERSATION)
    for i, message in enumerate(CONVERSATION):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = encode_prompt(phi3_tok, CONVERSATION[:i])
        assert encoded.input_ids[: len(prompt)] == prompt
        assert phi3_tok.convert_ids_to_tokens(prompt[-2:]) == ["<|assistant|>", "Ċ"]  # "<|assistant|>\n"
        assert encoded.labels[len(prompt) - 1] == IGNORE_INDEX and encoded.labels[len(prompt)] != IGNORE_INDEX


def test_phi3_text_lines_convert_and_train_like_chat(tmp_path, phi3_tok):
    """``{"text": "<|user|>…<|end|>…"}`` lines (the Phi-3 cookbook's format) become chat examples that encode to
    the same ids as the same conversation written as chat JSONL."""
    from tempering.data.formats import load_examples, validate_any

    lines = [{"text": f"<|system|>\nBe brief.<|end|>\n<|user|>\nQuestion {i}? <|end|>\n<|assistant|> \n"
                      f"Answer {i}. <|end|>\n<|user|>\nWhy?<|end|>\n<|assistant|>\nBecause.<|end|>\n<|endoftext|>"}
             for i in range(12)]
    path = write_jsonl(tmp_path / "phi3_text.jsonl", lines)
    messages, labels, report = load_examples(path)
    assert report.format == "text" and labels is None and len(messages) == 12
    assert messages[0] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question 0?"},
                           {"role": "assistant", "content": "Answer 0."}, {"role": "user", "content": "Why?"},
                           {"role": "assistant", "content": "Because."}]
    assert _trained_runs(phi3_tok, encode_chat(phi3_tok, messages[0])) == ["Answer 0.<|end|>", "Because.<|end|>"]
    validated = validate_any(path, tokenizer=phi3_tok, context_length=4096)
    assert validated.valid, validated.errors
    assert validated.stats["format"] == "text" and validated.stats["valid_examples"] == 12


COOKBOOK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "phi3-cookbook"


@pytest.mark.skipif(not COOKBOOK.exists(), reason="../shared/data is absent")
def test_the_phi3_cookbook_text_data_validates_on_the_phi3_tokenizer(phi3_tok):
    from tempering.data.formats import validate_any

    report = validate_any(COOKBOOK / "truthfulqa_text_valid.jsonl", tokenizer=phi3_tok, context_length=4096)
    assert report.stats["format"] == "text" and report.stats["valid_examples"] > 0
    assert not [e for e in report.errors if e.code == "unsupported_chat_template"]


# ---------------------------------------------------------------- training


def _lora_targets(model) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def test_all_linear_lora_adapts_the_fused_projections_leaves_the_base_and_learns(tiny_phi3, tmp_path):
    from tempering.train.loss import evaluate
    from tempering.train.recipe import fit, setup

    path = write_jsonl(tmp_path / "same.jsonl", [chat_example("Say the magic word.", "Abracadabra!")] * 12)
    state = setup(TuneConfig(model=tiny_phi3, training_file=path, validation_file=path, seed=3, evaluate=False,
                             hyperparameters={"n_epochs": 6, "batch_size": 4, "learning_rate_multiplier": 10.0}))
    assert state.hp.learning_rate == pytest.approx(2e-3)  # the phi3 family's base rate, times 10
    assert _lora_targets(state.model) == set(FUSED)  # all-linear: every projection, never the LM head
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    with state.model.disable_adapter():
        base_loss = evaluate(state.model, state.valid, state.make_batch, state.loss_fn)["loss"]
    fit(state)
    after = dict(state.model.named_parameters())
    base = [n for n in before if "lora_" not in n]
    assert base and all(not after[n].requires_grad and torch.equal(before[n], after[n]) for n in base)
    assert all(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    assert evaluate(state.model, state.valid, state.make_batch, state.loss_fn)["loss"] < base_loss - 1.0


def test_named_fused_targets_train_only_those(tiny_phi3, tmp_path):
    result = _tune(tiny_phi3, _magic_file(tmp_path), lora={"target_modules": ["qkv_proj", "gate_up_proj"]},
                   hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10.0})
    assert result.valid_loss < result.base_valid_loss
    folder, meta = resolve_finetuned(result.model_id)
    assert meta["base_model"] == PHI3_ID
    config = json.loads((folder / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["gate_up_proj", "qkv_proj"]
    adapter = load_file(folder / "adapter_model.safetensors")
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter} == {"qkv_proj", "gate_up_proj"}
    # the fused shapes: qkv is [q heads + 2 × KV heads] × head_dim = (4 + 2 × 2) × 8; gate_up is 2 × intermediate
    qkv_b = next(v for k, v in adapter.items() if "qkv_proj.lora_B" in k)
    gate_up_b = next(v for k, v in adapter.items() if "gate_up_proj.lora_B" in k)
    assert qkv_b.shape[0] == 64 and gate_up_b.shape[0] == 128


def test_llama_target_names_on_a_phi3_say_which_layers_it_has(tiny_phi3, tmp_path):
    """``q_proj``/``v_proj`` (a Llama recipe) do not exist in a Phi-3: the error names its own layers."""
    from tempering.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError) as info:
        _tune(tiny_phi3, _magic_file(tmp_path), lora={"target_modules": ["q_proj", "v_proj"]})
    assert info.value.param == "lora.target_modules"
    for name in FUSED:
        assert name in info.value.message


def test_classification_head_on_phi3(tiny_phi3, tmp_path):
    from tempering.serve.classify import load_classifier_model

    labels = ["refund", "card", "transfer"]
    rows = ["text,category"] + [f"I need help with my {label} number {i},{label}" for i in range(8) for label in labels]
    path = tmp_path / "intents.csv"
    path.write_text("\n".join(rows) + "\n")
    # a tiny random model's macro-F1 barely moves in 4 epochs; its loss does: keep the epoch with the lowest
    result = tune(TuneConfig(model=tiny_phi3, task="classification", training_file=path, validation_file=path,
                             seed=3, evaluate=False, selection_metric="loss", early_stopping=0,
                             hyperparameters={"n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 10.0}))
    assert result.task == "classification" and result.valid_loss < result.base_valid_loss
    folder, meta = resolve_finetuned(result.model_id)
    assert meta["task"] == "classification" and sorted(meta["labels"]) == sorted(labels)
    adapter = load_file(folder / "adapter_model.safetensors")
    assert any("score" in k for k in adapter) and any("qkv_proj.lora_A" in k for k in adapter)
    classifier = load_classifier_model(result.model_id)
    answers = classifier.classify(["I need help with my card number 3", "refund"])
    assert all(a["label"] in labels and sum(a["scores"].values()) == pytest.approx(1.0) for a in answers)


@pytest.fixture
def resume_files(tmp_path) -> tuple[Path, Path]:
    """test_resume's data: 40 training examples (10 steps an epoch at batch size 4) and 6 validation ones."""
    rows = [chat_example(f"Spell the number {i}.", f"The number {i} is spelled {i * 7}.") for i in range(46)]
    return write_jsonl(tmp_path / "train.jsonl", rows[:40]), write_jsonl(tmp_path / "valid.jsonl", rows[40:])


def test_cancel_mid_epoch_then_resume_is_exact_on_phi3(tiny_phi3, resume_files):
    """test_resume's exact-resume check (cancel at step 14 of 30, resume, match the uninterrupted run) on Phi-3."""
    from tempering.train.checkpoint import latest_checkpoint
    from tempering.train.fit import RunCancelled

    config = _resume_config(tiny_phi3, resume_files, evaluate=False)
    reference = tune(config)
    steps = []
    with pytest.raises(RunCancelled, match="cancelled at step 14"):
        tune(config, on_event=lambda e: steps.append(e["data"].get("step")),
             should_stop=lambda: max((s for s in steps if s), default=0) >= 14)
    run = Path(reference.run_dir).parent / _only_unfinished_run()
    assert latest_checkpoint(run).name == "step-000014"
    resumed = tune(config, resume=True)
    assert Path(resumed.run_dir) == run
    _assert_same_result(resumed, reference)


# ---------------------------------------------------------------- serving


def _fused_adapter(model_dir: Path, out: Path, seed: int, targets=FUSED, rank: int = 4) -> Path:
    """A LoRA adapter with random (non-zero) weights on Phi-3's fused projections."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=16 * rank, target_modules=list(targets), init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def phi3_adapters(tiny_phi3_dir, tmp_path_factory) -> list[Path]:
    """Every fused projection at rank 4; only qkv_proj and gate_up_proj at rank 8; everything at rank 2."""
    root = tmp_path_factory.mktemp("phi3-adapters")
    return [_fused_adapter(tiny_phi3_dir, root / "all", 0),
            _fused_adapter(tiny_phi3_dir, root / "fused-only", 1, ("qkv_proj", "gate_up_proj"), rank=8),
            _fused_adapter(tiny_phi3_dir, root / "rank-2", 2, rank=2)]


@pytest.fixture
def phi3_engine(tiny_phi3):
    from tempering.serve.engine import TransformersEngine

    engine = TransformersEngine(tiny_phi3, max_batch=16, max_adapters=8, threads=1)
    yield engine
    engine.stop()


def test_mixed_adapter_batch_over_fused_projections_matches_generate_merged(phi3_engine, tiny_phi3_dir,
                                                                            phi3_adapters):
    """Every row of a batch mixing the base and three adapters (different targets and ranks) decodes what
    transformers' ``generate`` gives on the base with that adapter merged (serve.lora's stacked products)."""
    no_eos(phi3_engine)
    params = SamplingParams(max_tokens=10, logprobs=True)
    jobs = [(prompt, adapter) for prompt in PROMPTS for adapter in (None, *phi3_adapters)]

    async def run_all():
        return await asyncio.gather(*(collect(phi3_engine, p, params, a) for p, a in jobs))

    results = asyncio.run(run_all())
    assert phi3_engine.adapters.lean and phi3_engine.prefill_passes < len(jobs)
    answers = set()
    for (prompt, adapter), chunks in zip(jobs, results):
        assert token_ids(chunks) == alone(tiny_phi3_dir, adapter, prompt, 10), (prompt, adapter)
        answers.add((tuple(prompt), tuple(token_ids(chunks))))
    assert len(answers) == len(jobs)  # every adapter changes every answer: the comparison means something


def test_int8_serving_quantizes_fused_projections_and_keeps_adapters(tiny_phi3, phi3_adapters, monkeypatch):
    """TEMPERING_SERVE_QUANTIZE=int8 (settings → Serving → engine): qkv_proj, gate_up_proj and the untied head are
    int8, PEFT wraps them, and the first token's log-probabilities stay close to float32's."""
    from tempering.serve.engine import TransformersEngine
    from tempering.serve.quantize import Int8Linear
    from tempering.serve.registry import Serving
    from tempering.settings import get_settings, reset_settings

    monkeypatch.setenv("TEMPERING_SERVE_QUANTIZE", "int8")
    reset_settings()
    serving = Serving(quantize=get_settings().serve_quantize, threads=1)
    float_engine = TransformersEngine(tiny_phi3, threads=1)
    try:
        int8_engine = serving.engine(tiny_phi3)
        for engine in (float_engine, int8_engine):
            no_eos(engine)
        layer = int8_engine.model.model.layers[0]
        assert all(isinstance(m, Int8Linear) for m in (layer.self_attn.qkv_proj, layer.mlp.gate_up_proj,
                                                       int8_engine.model.lm_head))
        params = SamplingParams(max_tokens=1, logprobs=True, top_logprobs=5)
        for adapter in (None, *phi3_adapters[:2]):
            exact = asyncio.run(collect(float_engine, PROMPTS[1], params, adapter))[0].logprobs[0]
            close = asyncio.run(collect(int8_engine, PROMPTS[1], params, adapter))[0].logprobs[0]
            assert close.token_id == exact.token_id
            assert [t.logprob for t in close.top] == pytest.approx([t.logprob for t in exact.top], abs=0.15)
        assert int8_engine.adapters.lean  # the adapters wrap the int8 layers and still go through serve.lora
    finally:
        float_engine.stop()
        for engine in serving.engines.values():
            engine.stop()


def test_a_fine_tuned_phi3_answers_what_it_learned_and_stops_at_end(tiny_phi3, tmp_path):
    """Trained under the Phi-3 template, served through the same prompt code: the CLI/evaluation path (merged,
    serve.local) and the engine (adapter, encode_prompt's ids) both answer the taught text and stop at
    ``<|end|>`` (an end-of-turn id from Phi-3's generation_config), never printing a special token."""
    from tempering.serve import complete, load_chat_model
    from tempering.serve.engine import TransformersEngine

    question = [{"role": "user", "content": "Say the magic word."}]
    path = write_jsonl(tmp_path / "same.jsonl", [chat_example("Say the magic word.", "Abracadabra!", system=False)] * 12)
    # a strong adapter (alpha/r = 16) so that a random 2-layer model learns the answer exactly
    result = _tune(tiny_phi3, path, lora={"rank": 16, "alpha": 256},
                   hyperparameters={"n_epochs": 15, "batch_size": 4, "learning_rate_multiplier": 10.0})
    chat = load_chat_model(result.model_id)
    assert chat.tokenizer.convert_tokens_to_ids("<|end|>") in chat.eos_ids
    assert complete(chat, question, SamplingParams(max_tokens=12)) == "Abracadabra!"

    engine = TransformersEngine(tiny_phi3, threads=1)
    try:
        prompt = encode_prompt(chat.tokenizer, question)
        chunks = asyncio.run(collect(engine, prompt, SamplingParams(max_tokens=12), resolve_finetuned(result.model_id)[0]))
    finally:
        engine.stop()
    assert "".join(c.text for c in chunks) == "Abracadabra!" and chunks[-1].finish_reason == "stop"


# ---------------------------------------------------------------- export


def _logits(model, tokenizer, text: str = "<|user|>\nSay the magic word number 3.<|end|>\n<|assistant|>\n"):
    with torch.inference_mode():
        return model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits.float()


def test_peft_and_merged_exports_load_with_plain_transformers(tiny_phi3, tiny_phi3_dir, tmp_path):
    """The PEFT folder reloads on the plain base with PEFT; the merged folder is a plain Phi3ForCausalLM (fused
    weights merged) with Phi-3's tokenizer, chat template and end-of-turn ids; both compute what is served."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tempering.export import export_model
    from tempering.serve import load_chat_model

    model_id = _tune(tiny_phi3, _magic_file(tmp_path)).model_id
    served = load_chat_model(model_id).model
    peft_folder = export_model(model_id, "peft", tmp_path / "peft").path
    merged_folder = export_model(model_id, "merged", tmp_path / "merged").path

    tokenizer = AutoTokenizer.from_pretrained(peft_folder)
    base = AutoModelForCausalLM.from_pretrained(tiny_phi3_dir).eval()
    base_logits = _logits(base, tokenizer)
    adapted = PeftModel.from_pretrained(base, peft_folder).eval()
    assert not torch.allclose(base_logits, _logits(served, tokenizer), atol=1e-3)  # the adapter matters
    torch.testing.assert_close(_logits(adapted, tokenizer), _logits(served, tokenizer), atol=1e-5, rtol=1e-5)

    config = json.loads((merged_folder / "config.json").read_text())
    assert config["architectures"] == ["Phi3ForCausalLM"] and "peft" not in json.dumps(config).lower()
    merged = AutoModelForCausalLM.from_pretrained(merged_folder).eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_folder)
    assert merged_tokenizer.chat_template == tokenizer.chat_template and "<|assistant|>" in tokenizer.chat_template
    end = merged_tokenizer.convert_tokens_to_ids("<|end|>")
    assert end in GenerationConfig.from_pretrained(merged_folder).eos_token_id
    assert {k for k in load_file(merged_folder / "model.safetensors") if "lora" in k} == set()
    torch.testing.assert_close(_logits(merged, merged_tokenizer), _logits(served, tokenizer), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- LongRoPE and the sliding window

ORIGINAL, WINDOW = 64, 16  # the tiny 128k-style model: LongRoPE switches past 64 tokens, attention sees 16


@pytest.fixture(scope="module")
def long_phi3_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny Phi-3 configured like Phi-3-mini-128k (LongRoPE, 4× its original context) with a short sliding
    window, its config.json written the way the Hugging Face repository has it (``rope_scaling`` with ``type``)."""
    folder = save_tiny_phi3(tmp_path_factory.mktemp("tiny-phi3-long"), tokenizer_dir, attention_scale=30.0,
                            max_position_embeddings=4 * ORIGINAL, original_max_position_embeddings=ORIGINAL,
                            sliding_window=WINDOW)
    config = json.loads((folder / "config.json").read_text())
    del config["rope_parameters"]
    half_head = config["hidden_size"] // config["num_attention_heads"] // 2
    config |= {"rope_theta": 10000.0, "rope_scaling": {
        "type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(half_head)],
        "long_factor": [2.0 ** i for i in range(half_head)]}}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture
def long_phi3(long_phi3_dir) -> str:
    from tempering.catalog import register_local_path

    register_local_path("phi-3-mini-128k-instruct", long_phi3_dir)
    return "phi-3-mini-128k-instruct"


def _reference_logprobs(model, prompt: list[int], answer: list[int]) -> list[float]:
    """Each answer token's log-probability from a fresh forward pass over everything before it: what the model
    gives a sequence of that length (short factors up to ORIGINAL tokens, long beyond)."""
    found = []
    for k, token in enumerate(answer):
        with torch.inference_mode():
            logits = model(torch.tensor([prompt + answer[:k]])).logits[0, -1].float()
        found.append(float(torch.log_softmax(logits, -1)[token]))
    return found


def test_longrope_and_sliding_window_config_loads_and_trains(long_phi3, tmp_path):
    from tempering.catalog import load_causal_lm

    model = load_causal_lm(long_phi3)
    assert model.model.rotary_emb.rope_type == "longrope" and model.config.sliding_window == WINDOW
    assert model.config.rope_parameters["original_max_position_embeddings"] == ORIGINAL
    # answers long enough that batches hold sequences past the window and past the switch to the long factors
    rows = [chat_example(f"Count from {i}.", " ".join(str(i + j) for j in range(4 + 9 * (i % 4)))) for i in range(12)]
    result = _tune(long_phi3, write_jsonl(tmp_path / "count.jsonl", rows))
    assert result.valid_loss < result.base_valid_loss
    folder, meta = resolve_finetuned(result.model_id)
    assert meta["base_model"] == long_phi3 and (folder / "adapter_model.safetensors").is_file()


def test_engine_serves_longrope_and_sliding_window_as_each_request_alone(long_phi3, long_phi3_dir, tmp_path):
    """A row crossing the LongRoPE switch while others join (past the sliding window), a short row beside one
    past the switch, adapters mixed in: every row gets what it would alone (generate's tokens, the
    log-probabilities of a fresh pass). The engine used to fail the join (sliding cache layers), let a long
    row switch its neighbours to the long factors, and keep short-factor keys past the switch."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tempering.serve.engine import TransformersEngine

    adapter = _fused_adapter(long_phi3_dir, tmp_path / "adapter", 0)
    short, crossing, long = list(range(100, 105)), list(range(200, 260)), list(range(300, 300 + ORIGINAL + 16))
    leader = (crossing, adapter, 40)  # past the window from its prefill, crosses the switch at its 5th token
    joiners = [(short, None, 12), (long, adapter, 6), (crossing, None, 10), (short, adapter, 12)]
    engine = TransformersEngine(long_phi3, threads=1)
    no_eos(engine)

    def ask(prompt, chosen, n):
        return collect(engine, prompt, SamplingParams(max_tokens=n, logprobs=True), chosen)

    async def staggered():
        first = asyncio.create_task(ask(*leader))
        while engine.steps < 3:  # the others join a batch already decoding
            await asyncio.sleep(0.005)
        rest = await asyncio.gather(*(ask(*job) for job in joiners))
        return [await first, *rest]

    try:
        results = asyncio.run(staggered())
    finally:
        engine.stop()
    models = {None: AutoModelForCausalLM.from_pretrained(long_phi3_dir).eval(),
              adapter: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(long_phi3_dir),
                                                 adapter).merge_and_unload().eval()}
    for (prompt, chosen, n), chunks in zip([leader, *joiners], results):
        ids = token_ids(chunks)
        assert ids == alone(long_phi3_dir, chosen, prompt, n), (len(prompt), chosen)
        logprobs = [lp.logprob for c in chunks for lp in c.logprobs]
        assert logprobs == pytest.approx(_reference_logprobs(models[chosen], prompt, ids), abs=1e-4), (len(prompt),
                                                                                                       chosen)


def test_local_decoding_recomputes_the_cache_past_the_longrope_switch(long_phi3, long_phi3_dir):
    """serve.local (CLI chat, evaluation): a conversation crossing the switch while answering continues as
    generate does, with the whole cache recomputed under the long factors."""
    from transformers import AutoTokenizer

    from tempering.serve import load_chat_model
    from tempering.serve.local import generate

    chat = load_chat_model(long_phi3)
    chat.eos_ids = set()  # random weights: compare whole answers
    messages = [{"role": "user", "content": " ".join(["word"] * 50)}]
    prompt = encode_prompt(chat.tokenizer, messages)
    assert len(prompt) < ORIGINAL < len(prompt) + 20
    text = "".join(c.text for c in generate(chat, messages, SamplingParams(max_tokens=20)))
    tokenizer = AutoTokenizer.from_pretrained(long_phi3_dir)
    assert text == tokenizer.decode(alone(long_phi3_dir, None, prompt, 20), skip_special_tokens=True)


def test_chat_completions_build_the_phi3_prompt(tiny_phi3):
    """A deployed Phi-3 over the REST API (in process): the answer is the engine's continuation of exactly
    ``encode_prompt``'s ids, stopping where serve.local stops."""
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.serve import complete, load_chat_model
    from tempering.settings import get_settings

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say the magic word."}]
    with TestClient(create_app(get_settings(), workers=0)) as client:
        auth = {"Authorization": f"Bearer {client.app.state.initial_api_key}"}
        created = client.post("/v1/deployments", headers=auth, json={"model": tiny_phi3, "name": "phi"})
        assert created.status_code in (200, 201), created.text
        answer = client.post("/v1/chat/completions", headers=auth, json={
            "model": "phi", "messages": messages, "temperature": 0, "max_tokens": 10})
        assert answer.status_code == 200, answer.text
    body = answer.json()
    chat = load_chat_model(tiny_phi3)
    assert body["usage"]["prompt_tokens"] == len(encode_prompt(chat.tokenizer, messages))
    assert body["usage"]["completion_tokens"] > 0
    assert body["choices"][0]["message"]["content"] == complete(chat, messages, SamplingParams(max_tokens=10))
