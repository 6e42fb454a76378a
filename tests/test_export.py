"""``tempering export`` on the tiny model: a PEFT folder and merged weights that plain transformers/PEFT
load and that compute what Tempering serves; checkpoints; atomic writes that never replace what is not an
export."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import chat_example, write_jsonl
from tempering.cli.main import app
from tempering.errors import InvalidConfigError
from tempering.export import MARKER, default_out, export_model
from tempering.train import TuneConfig, tune

runner = CliRunner()
LABELS = ["refund", "card", "transfer"]
TEXT = "Say the magic word number 3. Abracadabra 3!"


def _tune(tiny_model, tmp_path, **overrides):
    rows = [chat_example(f"Say the magic word number {i}.", f"Abracadabra {i}!") for i in range(12)]
    path = write_jsonl(tmp_path / "magic.jsonl", rows)
    return tune(TuneConfig(model=tiny_model, training_file=path, validation_file=path, seed=3, evaluate=False,
                           hyperparameters={"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 10.0},
                           **overrides))


def _logits(model, tokenizer, text: str = TEXT) -> torch.Tensor:
    with torch.inference_mode():
        return model(**tokenizer(text, return_tensors="pt")).logits.float()


def _cli(*args):
    return runner.invoke(app, ["export", *map(str, args)])


def test_peft_export_reloads_with_peft_and_matches_the_served_model(tiny_model, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempering.serve import load_chat_model

    model_id = _tune(tiny_model, tmp_path).model_id
    result = _cli(model_id, "--format", "peft", "--out", tmp_path / "peft", "--json")
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written["format"] == "peft" and written["dtype"] is None
    folder = tmp_path / "peft"
    assert {"adapter_config.json", "adapter_model.safetensors", "tempering.json", "tokenizer.json",
            MARKER} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / MARKER).read_text())["base_model"] == tiny_model

    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    base_logits = _logits(base, tokenizer)
    adapted = PeftModel.from_pretrained(base, folder).eval()
    served = load_chat_model(model_id).model
    assert not torch.allclose(base_logits, _logits(served, tokenizer), atol=1e-3)  # the adapter matters
    torch.testing.assert_close(_logits(adapted, tokenizer), _logits(served, tokenizer), atol=1e-5, rtol=1e-5)


def test_merged_export_loads_with_plain_transformers(tiny_model, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempering.train.artifacts import resolve_finetuned

    model_id = _tune(tiny_model, tmp_path).model_id
    result = export_model(model_id, "merged", tmp_path / "merged")
    folder = result.path
    assert result.dtype == "float32" and (folder / "generation_config.json").is_file()
    assert not (folder / "adapter_config.json").exists()
    config_text = (folder / "config.json").read_text()
    assert "quantization_config" not in config_text and "peft" not in config_text.lower()
    assert json.loads(config_text)["architectures"] == ["LlamaForCausalLM"]

    tokenizer = AutoTokenizer.from_pretrained(folder)
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    unmerged = PeftModel.from_pretrained(base, resolve_finetuned(model_id)[0]).eval()
    torch.testing.assert_close(_logits(merged, tokenizer), _logits(unmerged, tokenizer), atol=1e-4, rtol=1e-4)
    assert tokenizer.chat_template  # the chat template travels with it


def test_merged_classifier_loads_as_sequence_classification(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tempering.serve.classify import load_classifier_model

    rows = ["text,category"] + [f"I need help with my {label} number {i},{label}"
                                for i in range(6) for label in LABELS]
    path = tmp_path / "intents.csv"
    path.write_text("\n".join(rows) + "\n")
    config = TuneConfig(model=tiny_model, task="classification", training_file=path, validation_file=path,
                        seed=3, evaluate=False, hyperparameters={"n_epochs": 1, "batch_size": 4})
    model_id = tune(config).model_id
    folder = export_model(model_id, "merged", tmp_path / "classifier").path
    assert json.loads((folder / "tempering-export.json").read_text())["input_format"] == "chat"

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert set(model.config.id2label.values()) == set(LABELS)
    assert model.config.label2id == {label: i for i, label in model.config.id2label.items()}
    texts = ["I need help with my card number 2", "refund please"]
    served = load_classifier_model(model_id).classify(texts)
    for text, answer in zip(texts, served):
        with torch.inference_mode():
            # a classifier reads its text as the user's turn of the chat template (tempering-export.json's
            # input_format "chat"), the assistant's turn opened
            inputs = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                   return_tensors="pt", return_dict=True)
            probabilities = model(**inputs).logits.softmax(-1)[0]
        mine = {model.config.id2label[i]: float(p) for i, p in enumerate(probabilities)}
        assert mine == pytest.approx(answer["scores"], abs=1e-4)


def test_checkpoints_export_by_either_id_form(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempering.serve.local import load_chat
    from tempering.train.refs import resolve

    run = _tune(tiny_model, tmp_path, checkpoint_every_steps=1)
    monkeypatch.chdir(tmp_path)
    name = f"{run.model_id}@step-2"
    result = export_model(name, "peft")  # the default folder, in the current one
    assert result.path == tmp_path / default_out(f"{run.model_id}@step-000002", "peft")
    assert result.kind == "checkpoint"
    assert not {"training_state.json", "training_state.safetensors"} & set(result.files)
    checkpoint = tmp_path / "home" / "runs" / run.model_id.split(":")[-1] / "checkpoints" / "step-000002"
    exported, trained = (load_file(f / "adapter_model.safetensors") for f in (result.path, checkpoint))
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)

    merged = export_model(f"{run.model_id}:ckpt-step-1", "merged", tmp_path / "step1").path
    tokenizer = AutoTokenizer.from_pretrained(merged)
    served = load_chat(resolve(f"{run.model_id}@step-1")).model
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(merged), tokenizer),
                               _logits(served, tokenizer), atol=1e-4, rtol=1e-4)


def test_a_base_model_exports_its_weights_not_an_adapter(tiny_model, tiny_model_dir, tmp_path):
    result = export_model(tiny_model, "merged", tmp_path / "base")
    copied, original = (load_file(f / "model.safetensors") for f in (result.path, tiny_model_dir))
    assert all(torch.equal(copied[k], original[k]) for k in original)
    with pytest.raises(InvalidConfigError, match="base model: it has no adapter"):
        export_model(tiny_model, "peft", tmp_path / "nope")


def test_refuses_to_overwrite_unless_forced_and_only_an_export(tiny_model, tmp_path):
    model_id = _tune(tiny_model, tmp_path).model_id
    folder = tmp_path / "out"
    assert _cli(model_id, "--format", "peft", "--out", folder).exit_code == 0
    again = _cli(model_id, "--format", "peft", "--out", folder)
    assert again.exit_code == 1 and "not empty; pass --force" in again.output
    forced = _cli(model_id, "--format", "merged", "--out", folder, "--force")
    assert forced.exit_code == 0, forced.output
    assert "Exported" in forced.output and "AutoModelForCausalLM.from_pretrained" in forced.output
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    assert not list(tmp_path.glob(".out.*.tmp"))  # the temp folder was renamed into place

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = _cli(model_id, "--format", "peft", "--out", mine, "--force")
    assert refused.exit_code == 1 and "--force only replaces exports" in refused.output
    assert (mine / "notes.txt").read_text() == "keep me"


def test_bad_ids_and_formats_say_what_to_do(tiny_model, tmp_path):
    missing = _cli("ft:tiny-llama::nosuchrun", "--format", "peft", "--out", tmp_path / "a")
    assert missing.exit_code == 1 and "no fine-tuned model" in missing.output
    unknown = _cli("no-such-model", "--format", "merged", "--out", tmp_path / "b")
    assert unknown.exit_code == 1 and "error:" in unknown.output
    bad = _cli("ft:tiny-llama::x", "--format", "onnx", "--dtype", "int4")
    assert bad.exit_code == 1
    assert "--format must be one of" in bad.output and "--dtype must be one of" in bad.output
    q8 = _cli("ft:tiny-llama::x", "--format", "merged", "--dtype", "q8_0")
    assert q8.exit_code == 1 and "--format gguf" in q8.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _gguf_round_trip(folder, reference, tokenizer):
    """The GGUF read back by transformers' own GGUF loader (independent of our writer: it undoes the rotary
    permutation and rebuilds the tokenizer from the metadata) computes what ``reference`` computes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="model.gguf")
    assert loaded_tokenizer(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32).eval()
    return _logits(loaded, tokenizer), _logits(reference, tokenizer)


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-4), ("auto", 3e-2), ("q8_0", 0.25)])
def test_gguf_export_reads_back_as_the_merged_model(tiny_model, tiny_model_dir, tmp_path, dtype, tolerance):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempering.train.artifacts import resolve_finetuned

    model_id = _tune(tiny_model, tmp_path).model_id
    result = _cli(model_id, "--format", "gguf", "--dtype", dtype, "--out", tmp_path / "gguf", "--json")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "gguf"
    assert {"model.gguf", "Modelfile", MARKER} <= {p.name for p in folder.iterdir()}
    assert "FROM ./model.gguf" in (folder / "Modelfile").read_text()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                       resolve_finetuned(model_id)[0]).merge_and_unload().eval()
    got, want = _gguf_round_trip(folder, merged, tokenizer)
    assert (got - want).abs().max() < tolerance * want.abs().max()


def test_gguf_export_of_phi3(tiny_phi3, tiny_phi3_dir, tmp_path):
    """Phi-3's fused qkv and gate_up projections are written fused, as llama.cpp's phi3 graph reads them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_id = _tune(tiny_phi3, tmp_path).model_id
    folder = export_model(model_id, "gguf", tmp_path / "phi3-gguf", dtype="float32").path
    from gguf import GGUFReader

    reader = GGUFReader(folder / "model.gguf")
    assert reader.fields["general.architecture"].contents() == "phi3"
    assert "blk.0.attn_qkv.weight" in {t.name for t in reader.tensors}
    from peft import PeftModel

    from tempering.train.artifacts import resolve_finetuned

    tokenizer = AutoTokenizer.from_pretrained(tiny_phi3_dir)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_phi3_dir),
                                       resolve_finetuned(model_id)[0]).merge_and_unload().eval()
    got, want = _gguf_round_trip(folder, merged, tokenizer)
    assert (got - want).abs().max() < 1e-3 * want.abs().max()


def test_gguf_export_runs_in_llama_cpp(tiny_model, tiny_model_dir, tmp_path):
    """llama.cpp itself (llama-cpp-python, the bench extra) loads the file and its greedy tokens are
    transformers'; skipped where it is not installed."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = export_model(tiny_model, "gguf", tmp_path / "base-gguf", dtype="float32").path
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    llm = llama_cpp.Llama(str(folder / "model.gguf"), n_ctx=256, n_threads=1, verbose=False, logits_all=False)
    prompt = tokenizer(TEXT)["input_ids"]
    with torch.inference_mode():
        want = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt):].tolist()
    got = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        got.append(token)
        if len(got) == len(want):
            break
    assert got == want


def test_gguf_lora_adapter_applies_to_the_base_gguf_as_the_merge_did(tiny_model, tmp_path):
    """adapter.gguf (llama.cpp's LoRA form) added to the base's GGUF as llama.cpp adds it, W + B·A·alpha/rank,
    gives the merged GGUF's matrices: names, orientation, the query/key permutation and the scale agree."""
    from gguf import GGUFReader

    model_id = _tune(tiny_model, tmp_path).model_id
    tuned = export_model(model_id, "gguf", tmp_path / "tuned", dtype="float32").path
    base = export_model(tiny_model, "gguf", tmp_path / "base", dtype="float32").path
    adapter = GGUFReader(tuned / "adapter.gguf")
    assert adapter.fields["general.type"].contents() == "adapter"
    alpha = adapter.fields["adapter.lora.alpha"].contents()
    lora = {t.name: t.data for t in adapter.tensors}
    base_w = {t.name: t.data for t in GGUFReader(base / "model.gguf").tensors}
    merged_w = {t.name: t.data for t in GGUFReader(tuned / "model.gguf").tensors}
    adapted = sorted(name.removesuffix(".lora_a") for name in lora if name.endswith(".lora_a"))
    assert "blk.0.attn_q.weight" in adapted and "blk.1.attn_k.weight" in adapted
    for name in adapted:
        a, b = lora[f"{name}.lora_a"], lora[f"{name}.lora_b"]
        rebuilt = base_w[name] + (b @ a) * (alpha / a.shape[0])
        assert abs(rebuilt - merged_w[name]).max() < 1e-5, name
