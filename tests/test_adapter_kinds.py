"""The job's adapter kind (LoRA, DoRA, full fine-tuning), optimizer and label smoothing: what each refuses up
front, and that a tiny-model job of each kind trains, resolves to its own files, and answers."""

from __future__ import annotations

import json

import pytest
import torch

from tempering.errors import InvalidConfigError
from tempering.train import TuneConfig, tune
from tempering.train.artifacts import FULL_WEIGHTS, resolve_finetuned
from tempering.train.config import parse_config
from tempering.train.fit import make_optimizer


def _config(train_file, model, **overrides) -> TuneConfig:
    overrides.setdefault("hyperparameters", {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5.0})
    return TuneConfig(model=model, training_file=train_file, seed=3, evaluate=False, **overrides)


# ---- validation: every problem at once, each by its field ----

@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"adapter": "qlora"}, "adapter", "'lora', 'dora' or 'full'"),
    ({"optimizer": "adam"}, "optimizer", "'adamw', 'sgd' or 'adafactor'"),
    ({"label_smoothing": 0.6}, "label_smoothing", "less than or equal to 0.5"),
    ({"label_smoothing": -0.1}, "label_smoothing", "greater than or equal to 0"),
    ({"adapter": "full", "lora": {"rank": 8}}, "lora", "adapter full trains every weight"),
    ({"selection_metric": "macro_f1"}, "selection_metric", "classification metric"),
    ({"selection_metric": "f1"}, "selection_metric", "'auto', 'loss', 'accuracy' or 'macro_f1'"),
    ({"early_stopping": -1}, "early_stopping", "between 0 (off) and 50"),
    ({"early_stopping": "yes"}, "early_stopping", "'auto'"),
    ({"head_init": "labels"}, "head_init", "a chat job has none"),
    ({"task": "classification", "head_init": "words"}, "head_init", "'auto', 'labels' or 'random'"),
    ({"class_weights": "balanced"}, "class_weights", "a chat job has none"),
    ({"task": "classification", "class_weights": "inverse"}, "class_weights", "'auto', 'balanced' or 'none'"),
])
def test_invalid_options_are_refused_naming_the_field(tmp_path, fields, field, words):
    with pytest.raises(InvalidConfigError) as caught:
        parse_config({"training_file": tmp_path / "t.jsonl", **fields})
    assert caught.value.param == field
    assert f"{field}: " in caught.value.message and words in caught.value.message


def test_all_problems_are_reported_together(tmp_path):
    with pytest.raises(InvalidConfigError) as caught:
        parse_config({"training_file": tmp_path / "t.jsonl", "adapter": "full", "lora": {"dropout": 0.1},
                      "optimizer": "lion", "label_smoothing": 0.9})
    message = caught.value.message
    assert "lora:" in message and "optimizer:" in message and "label_smoothing:" in message


def test_valid_combinations_pass_and_full_lowers_the_learning_rate(tmp_path):
    from tempering.train.config import resolve_hyperparameters

    full = parse_config({"training_file": tmp_path / "t.jsonl", "adapter": "full", "lora": {},
                         "optimizer": "adafactor", "weight_decay": 0.01, "label_smoothing": 0.1})
    lora = parse_config({"training_file": tmp_path / "t.jsonl", "task": "classification",
                         "selection_metric": "macro_f1", "early_stopping": 0})
    assert resolve_hyperparameters(full, 100, "smollm2", 1).learning_rate == pytest.approx(5e-5)
    assert resolve_hyperparameters(lora, 100, "smollm2", 1).learning_rate == pytest.approx(1e-3)
    assert lora.resolved_patience() == 0 and full.resolved_patience() == 0
    assert parse_config({"training_file": "t", "task": "classification"}).resolved_patience() == 2


def test_the_options_travel_from_the_cli_through_the_api_body_into_the_same_config(tmp_path):
    from tempering.api.protocol import JobCreate
    from tempering.cli.tune import remote_body

    config = parse_config({"training_file": tmp_path / "t.jsonl", "adapter": "dora", "optimizer": "adafactor",
                           "label_smoothing": 0.2, "early_stopping": 3, "selection_metric": "accuracy"})
    body = {**remote_body(config), "training_file": "file-1"}
    again = parse_config({**JobCreate.model_validate(body).config_fields(), "training_file": tmp_path / "t.jsonl"})
    assert again == config
    classifier = parse_config({"training_file": tmp_path / "t.csv", "task": "classification", "head_init": "random",
                               "class_weights": "balanced"})
    body = {**remote_body(classifier), "training_file": "file-1"}
    fields = JobCreate.model_validate(body).config_fields()
    assert fields["head_init"] == "random" and fields["class_weights"] == "balanced"
    with pytest.raises(Exception, match="lora") as caught:
        JobCreate.model_validate({**body, "adapter": "full", "lora": {"rank": 4}})  # refused by the API's body too
    assert caught.value.errors()[0]["loc"] == ("lora",)


@pytest.mark.parametrize("name", ["adamw", "sgd", "adafactor"])
def test_each_optimizer_steps_and_its_state_survives_a_checkpoint(name, tmp_path):
    from tempering.train.checkpoint import read_training_state, write_training_state

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    before = layer.weight.detach().clone()
    optimizer = make_optimizer(list(layer.parameters()), name, 1e-2, 0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    layer(torch.randn(3, 8)).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(before, layer.weight)
    write_training_state(tmp_path, optimizer=optimizer, scheduler=scheduler, position={})
    (tmp_path / "COMPLETE").write_text("ok\n")
    state, _ = read_training_state(tmp_path)
    fresh = make_optimizer(list(layer.parameters()), name, 1e-2, 0.01)
    fresh.load_state_dict(state["optimizer"])  # JSON + safetensors round trip, no pickle
    assert type(fresh).__name__ == type(optimizer).__name__


def test_label_smoothing_raises_the_training_loss_of_a_confident_model(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from tempering.data import encode_chat
    from tempering.train.batching import collate
    from tempering.train.loss import sparse_lm_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    batch = collate([encode_chat(tokenizer, [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a b c"}])], tokenizer.pad_token_id)
    with torch.no_grad():
        plain, smoothed = sparse_lm_loss(model, batch), sparse_lm_loss(model, batch, label_smoothing=0.3)
    assert smoothed.n_tokens == plain.n_tokens and not torch.isclose(smoothed.mean, plain.mean)


# ---- a job of each kind: trains, resolves, answers ----

def _chat(model_id: str) -> str:
    from tempering.serve.local import complete, load_chat_model
    from tempering.serve.params import SamplingParams

    chat = load_chat_model(model_id)
    return complete(chat, [{"role": "user", "content": "What color is item 3?"}], SamplingParams(max_tokens=8))


def test_dora_job_trains_a_dora_adapter_that_serves_through_peft(tiny_model, qa_file):
    from tempering.serve.adapters import peft_only

    result = tune(_config(qa_file, tiny_model, adapter="dora", optimizer="sgd", label_smoothing=0.1))
    folder, meta = resolve_finetuned(result.model_id)
    assert json.loads((folder / "adapter_config.json").read_text())["use_dora"] is True
    assert meta["adapter"] == "dora" and meta["config"]["optimizer"] == "sgd"
    assert peft_only(folder)  # the engine's PEFT path, not serve.lora's
    assert result.valid_loss < result.base_valid_loss
    assert isinstance(_chat(result.model_id), str)


def test_full_job_saves_its_own_weights_and_serves_exports_and_deletes_like_an_adapter(tiny_model, qa_file,
                                                                                       tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from tempering.export import export_model
    from tempering.train import refs

    events = []
    result = tune(_config(qa_file, tiny_model, adapter="full", optimizer="adafactor",
                          hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10.0}),
                  on_event=events.append)
    folder, meta = resolve_finetuned(result.model_id)
    assert (folder / FULL_WEIGHTS).is_file() and not (folder / "adapter_config.json").exists()
    assert meta["adapter"] == "full"
    saved, base = load_file(folder / FULL_WEIGHTS), load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(saved[k], base[k]) for k in base if k in saved)  # every weight could move
    assert result.valid_loss < result.base_valid_loss
    checkpoint = refs.resolve(f"{result.model_id}:ckpt-step-{result.hyperparameters.n_epochs * 5}")
    assert checkpoint.full and (checkpoint.adapter / FULL_WEIGHTS).is_file()

    served = _chat(result.model_id)
    from tempering.serve.local import complete, load_chat
    from tempering.serve.params import SamplingParams

    assert complete(load_chat(refs.resolve(result.model_id)),  # the CLI's and evaluation's loader: same answer
                    [{"role": "user", "content": "What color is item 3?"}], SamplingParams(max_tokens=8)) == served

    # the serving engine: an engine of its own over the full weights, answering as the merged local path does
    import asyncio

    from tempering.data.encode import encode_prompt
    from tempering.serve.registry import Serving

    local = load_chat(refs.resolve(result.model_id))
    prompt = encode_prompt(local.tokenizer, [{"role": "user", "content": "What color is item 3?"}])
    expected = local.model.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                    pad_token_id=0)[0, len(prompt):].tolist()
    serving = Serving(threads=1)
    engine = serving.engine(tiny_model, folder)
    assert engine is serving.engine(tiny_model, folder) and engine is not serving.engine(tiny_model)
    engine.eos_ids = set()  # compare whole sequences

    async def answer():
        engine.wait_ready(60)
        engine.eos_ids = set()
        params = SamplingParams(max_tokens=6, logprobs=True)
        return [lp.token_id async for c in engine.generate(prompt, params, None) for lp in c.logprobs]

    try:
        assert asyncio.run(answer()) == expected
    finally:
        asyncio.run(serving.aclose())

    merged = export_model(result.model_id, "merged", tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(merged.path)
    torch.testing.assert_close(plain.model.layers[0].mlp.up_proj.weight, saved["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(InvalidConfigError, match="its own weights, not an adapter") as caught:
        export_model(result.model_id, "peft", tmp_path / "peft")
    assert caught.value.param == "format"


def test_continuing_a_model_needs_its_adapter_kind(tiny_model, qa_file):
    first = tune(_config(qa_file, tiny_model, adapter="full", hyperparameters={"n_epochs": 1, "batch_size": 8}))
    with pytest.raises(InvalidConfigError, match="adapter full") as caught:
        tune(_config(qa_file, first.model_id))
    assert caught.value.param == "adapter"
    second = tune(_config(qa_file, first.model_id, adapter="full", hyperparameters={"n_epochs": 1, "batch_size": 8}))
    assert resolve_finetuned(second.model_id)[1]["parent_model"] == first.model_id


def test_full_classification_job_on_phi3_classifies(tiny_phi3, tmp_path):
    from tempering.serve.classify import load_classifier_model

    rows = ["text,label"] + [f"{w} number {i},{w}" for i in range(12) for w in ("alpha", "beta")]
    data = tmp_path / "words.csv"
    data.write_text("\n".join(rows) + "\n")
    result = tune(TuneConfig(model=tiny_phi3, task="classification", training_file=data, validation_file=data,
                             adapter="full", seed=1, evaluate=False, label_smoothing=0.1,
                             hyperparameters={"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 10.0}))
    folder, _ = resolve_finetuned(result.model_id)
    assert (folder / FULL_WEIGHTS).is_file()
    [prediction] = load_classifier_model(result.model_id).classify(["alpha number 3"])
    assert prediction["label"] in {"alpha", "beta"}
    assert result.selection["metric"] == "macro_f1"


def test_a_cancelled_full_adafactor_run_resumes_exactly(tiny_model, qa_file):
    """A full model's checkpoint (every weight, Adafactor's factored state) restores exactly: the resumed run
    ends where an uninterrupted one ends."""
    from safetensors.torch import load_file

    from tempering.train.fit import RunCancelled

    def config():
        return _config(qa_file, tiny_model, adapter="full", optimizer="adafactor", label_smoothing=0.1,
                       hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10.0})

    reference = tune(config())
    steps = []
    with pytest.raises(RunCancelled, match="cancelled at step 7"):
        tune(config(), on_event=lambda e: steps.append(e["data"].get("step")),
             should_stop=lambda: max((s for s in steps if s), default=0) >= 7)
    resumed = tune(config(), resume=True)
    a = load_file(resolve_finetuned(resumed.model_id)[0] / FULL_WEIGHTS)
    b = load_file(resolve_finetuned(reference.model_id)[0] / FULL_WEIGHTS)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert [e["value"] for e in resumed.selection["epochs"]] == pytest.approx(
        [e["value"] for e in reference.selection["epochs"]], rel=1e-5)  # the history rebuilt from checkpoints


def test_a_full_job_through_the_api_is_deployed_chatted_with_and_deleted_like_an_adapter(tiny_model, qa_file):
    """The API's job creation takes adapter full; its model (and a checkpoint) deploy, answer through the serving
    path as the local loader does, refuse deletion while deployed, and delete with their files."""
    import time

    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.serve.local import complete, load_chat_model
    from tempering.serve.params import SamplingParams
    from tempering.settings import get_settings

    app = create_app(get_settings(), workers=1)
    with TestClient(app, headers={"Authorization": f"Bearer {app.state.initial_api_key}"}) as http:
        file_id = http.post("/v1/files", files={"file": ("qa.jsonl", qa_file.read_bytes())},
                            data={"purpose": "fine-tune"}).json()["id"]
        refused = http.post("/v1/fine_tuning/jobs", json={"model": tiny_model, "training_file": file_id,
                                                          "adapter": "full", "lora": {"rank": 4}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "lora"
        job = http.post("/v1/fine_tuning/jobs", json={
            "model": tiny_model, "training_file": file_id, "seed": 3, "adapter": "full", "optimizer": "sgd",
            "evaluate": False, "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10}}}}).json()
        deadline = time.monotonic() + 240
        while (job := http.get(f"/v1/fine_tuning/jobs/{job['id']}").json())["status"] not in (
                "succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "succeeded", job
        model = job["fine_tuned_model"]
        folder, _ = resolve_finetuned(model)
        assert (folder / FULL_WEIGHTS).is_file()
        checkpoints = http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
        assert len(checkpoints) == 2 and all("valid_loss" in c["metrics"] for c in checkpoints)
        events = http.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
        assert any("Kept the checkpoint of epoch" in e["message"] for e in events)

        for name, target in (("full", model), ("full-ckpt", checkpoints[0]["fine_tuned_model_checkpoint"])):
            assert http.post("/v1/deployments", json={"model": target, "name": name}).status_code == 200
        answer = http.post("/v1/chat/completions", json={"model": "full", "messages": [
            {"role": "user", "content": "What color is item 3?"}], "temperature": 0, "max_tokens": 8})
        assert answer.status_code == 200, answer.text
        local = complete(load_chat_model(model), [{"role": "user", "content": "What color is item 3?"}],
                         SamplingParams(max_tokens=8, temperature=0))
        assert answer.json()["choices"][0]["message"]["content"] == local
        assert http.post("/v1/chat/completions", json={"model": "full-ckpt", "messages": [
            {"role": "user", "content": "hi"}], "max_tokens": 4}).status_code == 200

        guarded = http.delete(f"/v1/models/{model}")
        assert guarded.status_code == 409 and guarded.json()["error"]["code"] == "model_has_deployments"
        for d in http.get("/v1/deployments").json()["data"]:
            assert http.delete(f"/v1/deployments/{d['id']}").status_code == 200
        assert http.delete(f"/v1/models/{model}").status_code == 200
        assert not folder.exists()


def test_the_wizards_classification_choices_become_the_same_config_fields():
    from tempering.web.tuning import DEFAULTS, config_fields

    state = {**DEFAULTS, "model": "m", "task": "classification"}
    assert "class_weights" not in config_fields(state) and "head_init" not in config_fields(state)  # auto: left out
    chosen = config_fields({**state, "class_weights": "balanced", "head_init": "random"})
    assert chosen["class_weights"] == "balanced" and chosen["head_init"] == "random"
