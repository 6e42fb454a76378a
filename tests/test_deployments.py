"""Deployments and chat completions: the official ``openai`` SDK against live ``tempering serve`` processes."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re

import httpx
import openai
import pytest
from conftest import TINY_ID, chat_example
from live_server import free_port, register_model, start_serving, wait_until_serving
from test_api import _jsonl, _wait

QUESTION = [{"role": "user", "content": "What color is item 3?"}]
GREEDY = {"temperature": 0, "max_tokens": 12}


def _start(home, port: int, extra_env: dict | None = None):
    env = {**os.environ, "TEMPERING_HOME": str(home), "TEMPERING_WORKER_LEASE_SECONDS": "10",
           "TEMPERING_SERVE_THREADS": "1", **(extra_env or {})}
    process = start_serving(env, port)
    return process, wait_until_serving(process, port)


def _register_tiny(home, tiny_model_dir):
    register_model(home, TINY_ID, tiny_model_dir)


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """A live server with two fine-tuned models of the tiny base (trained by its worker) and three deployments:
    the base and both fine-tuned models."""
    home = tmp_path_factory.mktemp("deploy-home")
    _register_tiny(home, tiny_model_dir)
    port = free_port()
    process, key = _start(home, port)
    base_url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    models = []
    for suffix, colors in (("warm", ["red", "orange"]), ("cool", ["blue", "green"])):
        rows = [chat_example(f"What color is item {i}?", f"Item {i} is {colors[i % 2]}.", system=False)
                for i in range(16)]
        file = client.files.create(file=("train.jsonl", _jsonl(rows)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=TINY_ID, training_file=file.id, suffix=suffix, seed=1, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 8, "batch_size": 4,
                                                                     "learning_rate_multiplier": 10}}})
        job = _wait(client, job.id)
        assert job.status == "succeeded", job.error
        models.append(job.fine_tuned_model)
    http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    for name, model in (("base", TINY_ID), ("warm", models[0]), ("cool", models[1])):
        response = http.post("/deployments", json={"model": model, "name": name})
        assert response.status_code == 200, response.text
    yield {"client": client, "http": http, "models": models, "home": home, "port": port, "key": key,
           "base_url": base_url}
    process.terminate()
    process.wait(timeout=30)


def _chat(client, model, **kwargs):
    return client.chat.completions.create(model=model, messages=QUESTION, **{**GREEDY, **kwargs})


def test_sdk_chats_with_a_fine_tuned_model_streaming_and_not(served):
    client, (warm, _) = served["client"], served["models"]
    whole = _chat(client, "warm")
    assert whole.object == "chat.completion" and whole.model == warm
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 0 and whole.usage.total_tokens == \
        whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert _chat(client, warm).choices[0].message.content == choice.message.content  # by model id too

    chunks = list(_chat(client, "warm", stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    # the content filter (on by default) opens with Azure's frame: the prompt's annotation, no choices
    assert chunks[0].choices == [] and chunks[0].prompt_filter_results[0]["prompt_index"] == 0
    assert chunks[1].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_fine_tuned_answers_differ_from_the_base_model(served):
    client = served["client"]
    answers = {name: _chat(client, name).choices[0].message.content for name in ("base", "warm", "cool")}
    assert len(set(answers.values())) == 3, answers


def test_sampling_parameters_and_their_bounds(served):
    client = served["client"]
    first = _chat(client, "warm", temperature=1.0, seed=11, n=3, max_tokens=6)
    again = _chat(client, "warm", temperature=1.0, seed=11, n=3, max_tokens=6)
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    cut = _chat(client, "warm", max_tokens=2)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 2

    full = _chat(client, "warm").choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    stopped = _chat(client, "warm", stop=[stop]).choices[0]
    assert stopped.finish_reason == "stop" and stopped.message.content == full[:full.index(stop)]

    lp = _chat(client, "warm", logprobs=True, top_logprobs=3, max_tokens=4).choices[0].logprobs.content
    assert len(lp) == 4 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp)

    for bad in ({"n": 10**9}, {"max_tokens": 10**7}, {"temperature": 3}, {"top_logprobs": 3}):
        with pytest.raises(openai.BadRequestError) as error:
            _chat(client, "warm", **bad)
        assert error.value.body["param"] in bad or error.value.body["param"] == "max_tokens", error.value.body
    with pytest.raises(openai.NotFoundError):
        _chat(client, "no-such-deployment")
    # an unknown field is ignored (and logged), not an error
    assert _chat(client, "warm", extra_body={"some_future_field": 1}).choices[0].message.content == full


def test_eight_concurrent_streams_with_mixed_adapters(served):
    client = served["client"]
    names = ["base", "warm", "cool", "warm", "cool", "base", "warm", "cool"]
    alone = {n: _chat(client, n, max_tokens=16).choices[0].message.content for n in set(names)}

    def stream(name):
        parts = _chat(client, name, max_tokens=16, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in parts if c.choices)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(stream, names))
    assert together == [alone[n] for n in names]


def test_delete_guard_metrics_and_request_log(served):
    client, http, (_, cool) = served["client"], served["http"], served["models"]
    with pytest.raises(openai.ConflictError) as conflict:
        client.models.delete(cool)
    assert "cool" in conflict.value.message and "delete them first" in conflict.value.message

    before = http.get("/deployments/cool/metrics").json()["requests"]
    _chat(client, "cool")
    metrics = http.get("/deployments/cool/metrics").json()
    assert metrics["requests"] == before + 1 and metrics["latency_ms"]["p50"] > 0
    assert metrics["completion_tokens"] > 0 and metrics["tokens_per_second"] > 0
    log = http.get("/deployments/cool/requests", params={"limit": 1}).json()["data"][0]
    assert log["endpoint"] == "chat.completions" and log["status"] == 200 and log["adapter"] == cool
    assert log["time_to_first_token_ms"] <= log["latency_ms"]

    prometheus = httpx.get(f"http://127.0.0.1:{served['port']}/metrics").text
    assert "tempering_request_latency_seconds_bucket" in prometheus
    assert "tempering_engine_adapters_loaded" in prometheus

    deployment_id = http.get("/deployments/cool").json()["id"]
    assert http.delete(f"/deployments/{deployment_id}").json()["deleted"]
    with pytest.raises(openai.NotFoundError):
        _chat(client, "cool")
    assert client.models.delete(cool).deleted


def test_quantization_is_chosen_per_deployment(served):
    """int8 and int4 deployments of the same fine-tuned model get engines of their own beside the float one
    (one per base model and quantization), answer, and report their quantization and memory: int4 weights take
    less than int8's. (Not less than float32's on this tiny model: its embedding, which stays float, is most of
    it, and the quantized head is a copy of its own where float32's is tied to the embedding.)"""
    client, http, (warm, _) = served["client"], served["http"], served["models"]
    for quantization in ("int8", "int4"):
        created = http.post("/deployments", json={"model": warm, "name": f"warm-{quantization}",
                                                  "quantization": quantization})
        assert created.status_code == 200, created.text
        assert created.json()["quantization"] == quantization
        assert http.get(f"/deployments/warm-{quantization}/metrics").json()["engine"]["loaded"] is False
    memory = {}
    for name in ("warm", "warm-int8", "warm-int4"):
        assert _chat(client, name, max_tokens=4).choices[0].message.content
        engine = http.get(f"/deployments/{name}/metrics").json()["engine"]
        assert engine["loaded"] is True
        memory[engine["quantization"]] = engine["memory_bytes"]
    assert 0 < memory["int4"] < memory["int8"] and memory["none"] > 0, memory
    prometheus = httpx.get(f"http://127.0.0.1:{served['port']}/metrics").text
    assert f'tempering_engine_memory_bytes{{base_model="{TINY_ID}@int4"}}' in prometheus
    listed = {d["name"]: d["quantization"] for d in http.get("/deployments").json()["data"]}
    assert listed["warm"] == "none" and listed["warm-int4"] == "int4"

    refused = http.post("/deployments", json={"model": TINY_ID, "name": "x", "backend": "llama.cpp",
                                              "quantization": "int8"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "quantization", refused.text
    assert http.post("/deployments", json={"model": TINY_ID, "quantization": "int2"}).status_code == 400
    for quantization in ("int8", "int4"):
        assert http.delete(f"/deployments/warm-{quantization}").json()["deleted"]


def test_deployment_requests_are_validated(served):
    http = served["http"]
    assert http.post("/deployments", json={"model": "ft:nope::x"}).status_code == 404
    duplicate = http.post("/deployments", json={"model": TINY_ID, "name": "base"})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["param"] == "name"
    assert http.post("/deployments", json={"model": TINY_ID, "name": "bad name!"}).status_code == 400
    assert http.post("/deployments", json={"model": TINY_ID, "backend": "upstream"}).status_code == 400
    listed = [d["name"] for d in http.get("/deployments").json()["data"]]
    assert {"base", "warm"} <= set(listed)


def test_upstream_backend_forwards_to_an_openai_compatible_server(served, tiny_model_dir, tmp_path):
    """A second server whose deployment forwards to the first one (the vLLM protocol: token-id prompts to
    /v1/completions) answers exactly what the first answers."""
    home = tmp_path / "front"
    _register_tiny(home, tiny_model_dir)  # the tokenizer and chat template only; no adapter files here
    port = free_port()
    process, key = _start(home, port, {"TEMPERING_UPSTREAM_API_KEY": served["key"],
                                       "TEMPERING_UPSTREAM_ALLOWED_URLS": json.dumps([served["base_url"]])})
    try:
        front = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        created = httpx.post(f"http://127.0.0.1:{port}/v1/deployments", headers={"Authorization": f"Bearer {key}"},
                             json={"model": served["models"][0], "name": "remote", "backend": "upstream",
                                   "upstream_url": served["base_url"], "upstream_model": "warm",
                                   "base_model": TINY_ID})
        assert created.status_code == 200, created.text
        direct = _chat(served["client"], "warm").choices[0].message.content
        assert _chat(front, "remote").choices[0].message.content == direct
        streamed = "".join(c.choices[0].delta.content or "" for c in _chat(front, "remote", stream=True) if c.choices)
        assert streamed == direct
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_deployments_survive_a_restart(tiny_model_dir, tmp_path):
    home = tmp_path / "home"
    _register_tiny(home, tiny_model_dir)
    port = free_port()
    process, key = _start(home, port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        httpx.post(f"http://127.0.0.1:{port}/v1/deployments", headers={"Authorization": f"Bearer {key}"},
                   json={"model": TINY_ID, "name": "kept"}).raise_for_status()
        before = _chat(client, "kept").choices[0].message.content
    finally:
        process.kill()
        process.wait(timeout=30)
    process, _ = _start(home, port)
    try:
        assert _chat(client, "kept").choices[0].message.content == before
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_classification_models_answer_classifications(tiny_model, tmp_path):
    """In-process: a classification model trained by the library, deployed and called."""
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.settings import get_settings
    from tempering.train.config import parse_config
    from tempering.train.recipe import tune

    rows = [{"text": f"{word} number {i}", "label": label} for i in range(12)
            for word, label in (("apple", "fruit"), ("carrot", "vegetable"))]
    data = tmp_path / "cls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = tune(parse_config({"model": tiny_model, "training_file": str(data), "task": "classification",
                                "evaluate": False, "hyperparameters": {"n_epochs": 1, "batch_size": 8}}))
    app = create_app(get_settings(), workers=0)
    key = app.state.initial_api_key
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as http:
        assert http.post("/v1/deployments", json={"model": result.model_id, "name": "sorter"}).status_code == 200
        answer = http.post("/v1/classifications", json={"model": "sorter", "input": ["apple number 3", "carrot"]})
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        assert [d["index"] for d in data] == [0, 1]
        assert all(set(d["scores"]) == {"fruit", "vegetable"} and abs(sum(d["scores"].values()) - 1) < 1e-4
                   for d in data)
        wrong = http.post("/v1/chat/completions", json={"model": "sorter", "messages": QUESTION})
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_task"


def test_cli_deploys_lists_and_deletes(served):
    from typer.testing import CliRunner

    from tempering.cli.main import app

    runner = CliRunner()
    server = ["--server", f"http://127.0.0.1:{served['port']}", "--api-key", served["key"]]
    made = runner.invoke(app, ["deploy", TINY_ID, "--name", "from-cli", "--no-content-filter", *server])
    assert made.exit_code == 0, made.output
    assert "from-cli" in made.output
    listed = runner.invoke(app, ["deployments", "list", "--json", *server])
    row = next(d for d in json.loads(listed.output) if d["name"] == "from-cli")
    assert row["content_filter"] is False and row["model"] == TINY_ID
    _chat(served["client"], "from-cli")
    shown = runner.invoke(app, ["deployments", "metrics", "from-cli", *server])
    assert shown.exit_code == 0 and "1 requests" in shown.output, shown.output
    again = runner.invoke(app, ["deploy", TINY_ID, "--name", "from-cli", *server])
    assert again.exit_code == 1 and "already exists" in again.output
    shown = runner.invoke(app, ["deployments", "filter", "from-cli", *server])
    assert shown.exit_code == 0 and "content filter off" in shown.output
    policy = '{"prompt": {"hate": "low", "jailbreak": "medium"}, "completion": {"hate": "high"}, "fail_closed": true}'
    changed = runner.invoke(app, ["deployments", "filter", "from-cli", "--policy", policy, "--json", *server])
    assert changed.exit_code == 0, changed.output
    stored = json.loads(changed.output)
    assert stored["content_filter"] is True and stored["content_filter_policy"]["prompt"] == {
        "hate": "low", "jailbreak": "medium"} and stored["content_filter_policy"]["fail_closed"] is True
    table = runner.invoke(app, ["deployments", "filter", "from-cli", *server])
    assert re.search(r"hate\s*│\s*low\s*│\s*high", table.output) and "fail closed" in table.output, table.output
    bad = runner.invoke(app, ["deployments", "filter", "from-cli", "--policy", "{not json", *server])
    assert bad.exit_code == 2 and "--policy" in bad.output
    refused = runner.invoke(app, ["deployments", "filter", "from-cli", "--policy", '{"prompt": {"gore": "low"}}',
                                  *server])
    assert refused.exit_code == 1 and "no classifier provides the category prompt.gore" in refused.output
    default = runner.invoke(app, ["deployments", "filter", "from-cli", "--on", "--json", *server])
    assert json.loads(default.output)["content_filter_policy"]["prompt"]["jailbreak"] == "medium"  # the server's
    off = runner.invoke(app, ["deployments", "filter", "from-cli", "--off", *server])
    assert "content filter off" in off.output
    assert runner.invoke(app, ["deployments", "delete", "from-cli", *server]).exit_code == 0


def test_deploy_gate_refuses_a_model_worse_than_base_unless_forced(tiny_model, qa_file):
    """In-process: the stored evaluation says "worse", so the deployment is refused with the numbers."""
    from fastapi.testclient import TestClient
    from test_evaluate import _model

    from tempering.api.app import create_app
    from tempering.evaluate import REPORT_FILE, EvaluationReport, decide
    from tempering.settings import get_settings
    from tempering.train.artifacts import resolve_finetuned
    from tempering.train.config import parse_config
    from tempering.train.recipe import tune

    result = tune(parse_config({"model": tiny_model, "training_file": str(qa_file), "evaluate": False,
                                "hyperparameters": {"n_epochs": 1, "batch_size": 8}}))
    worse = decide(_model(2.5, 0.30, result.model_id), _model(2.0, 0.40, tiny_model))
    report = EvaluationReport(data="x", answer_kind="text", n_examples=50, n_generated=50, max_new_tokens=64,
                              candidate=_model(2.5, 0.30, result.model_id), verdict=worse)
    (resolve_finetuned(result.model_id)[0].parent / REPORT_FILE).write_text(report.model_dump_json())
    app = create_app(get_settings(), workers=0)
    with TestClient(app, headers={"Authorization": f"Bearer {app.state.initial_api_key}"}) as http:
        refused = http.post("/v1/deployments", json={"model": result.model_id})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "worse_than_base" and "0.3000 vs 0.4000" in error["message"]
        assert error["param"] == "force"
        assert http.post("/v1/deployments", json={"model": result.model_id, "force": True}).status_code == 200


def test_cli_chat_with_a_deployment(served):
    """``tempering chat NAME --server`` streams the deployment's answer (the CLI playground)."""
    from typer.testing import CliRunner

    from tempering.cli.main import app

    expected = _chat(served["client"], "warm").choices[0].message.content
    result = CliRunner().invoke(app, ["chat", "warm", QUESTION[0]["content"], "--max-tokens", "12",
                                      "--server", f"http://127.0.0.1:{served['port']}", "--api-key", served["key"]])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip("\n") == expected
    missing = CliRunner().invoke(app, ["chat", "nope", "hi", "--server", f"http://127.0.0.1:{served['port']}",
                                       "--api-key", served["key"]])
    assert missing.exit_code == 1 and "not deployed" in missing.output
