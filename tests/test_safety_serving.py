"""The content filter in serving: a deployment's policy applied by the chat service to chat completions and
completions, in-process through the official ``openai`` SDK and raw HTTP, on the tiny model.

The tiny model's greedy answer is random-looking text; the tests learn it once with the filter off and put a
word from its middle on a project blocklist, which makes every path deterministic: a prompt holding the word
is refused, an answer is cut just before it.
"""

from __future__ import annotations

import json
import re

import openai
import pytest
from conftest import TINY_ID
from fastapi.testclient import TestClient

QUESTION = [{"role": "user", "content": "What color is item 3?"}]
# Seeded sampling repeats exactly; the tiny random model's greedy answer is only newlines, while at temperature 2
# with seed 2 it writes separate words ("alphaalpha… eligibility eligibility … gammagamma…").
GREEDY = {"temperature": 2, "seed": 2, "max_tokens": 64}
ONLY_LISTS = {"prompt": {}, "completion": {}, "blocklists": ["secret"], "stream_window": 16}


@pytest.fixture()
def app(tiny_model):
    from tempering.api.app import create_app
    from tempering.settings import get_settings

    return create_app(get_settings(), workers=0)


@pytest.fixture()
def http(app):
    with TestClient(app, headers={"Authorization": f"Bearer {app.state.initial_api_key}"}) as client:
        yield client


@pytest.fixture()
def sdk(app, http):
    return openai.OpenAI(base_url="http://testserver/v1", api_key=app.state.initial_api_key, max_retries=0,
                         http_client=http)


def _deploy(http, name: str, **fields) -> dict:
    response = http.post("/v1/deployments", json={"model": TINY_ID, "name": name, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def _set_filter(http, name: str, **body) -> dict:
    response = http.post(f"/v1/deployments/{name}/content_filter", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _blocklist(http, *terms: str) -> None:
    assert http.patch("/v1/contentsafety/text/blocklists/secret", json={"description": "test"}).status_code in (200, 201)
    response = http.post("/v1/contentsafety/text/blocklists/secret:addOrUpdateBlocklistItems",
                         json={"blocklistItems": [{"text": t} for t in terms]})
    assert response.status_code == 200, response.text


def _stream(http, model: str, **fields) -> list[dict]:
    body = {"model": model, "messages": QUESTION, "stream": True, **GREEDY, **fields}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def _streamed_text(frames: list[dict]) -> str:
    return "".join(c["delta"].get("content") or "" for f in frames for c in f["choices"])


@pytest.fixture()
def answer(http) -> dict:
    """The tiny model's answer, unfiltered, and a word from its middle to block (learnt, not assumed)."""
    _deploy(http, "probe", content_filter=False)
    whole = http.post("/v1/chat/completions", json={"model": "probe", "messages": QUESTION, **GREEDY}).json()
    text = whole["choices"][0]["message"]["content"]
    word = next(m.group(1) for m in re.finditer(r"(?<![A-Za-z0-9])([A-Za-z]{4,})(?![A-Za-z0-9])", text)
                if m.start() >= 12)
    first = min(m.start() for m in re.finditer(rf"(?<![A-Za-z0-9]){word}(?![A-Za-z0-9])", text, re.IGNORECASE))
    assert 0 < first < len(text) - 40, text  # a cut mid-answer, with text on both sides
    return {"text": text, "word": word, "cut": text[:first], "tokens": whole["usage"]["completion_tokens"]}


@pytest.fixture()
def guarded(http, answer) -> dict:
    """A deployment whose policy is only the project blocklist "secret", which holds the answer's word."""
    _blocklist(http, answer["word"])
    _deploy(http, "guarded", content_filter_policy=ONLY_LISTS)
    return answer


def test_a_blocked_prompt_is_a_400_content_filter_and_is_logged(http, sdk, guarded):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="guarded", messages=[{"role": "user", "content": f"say {guarded['word']}"}])
    error = caught.value.body
    assert caught.value.code == "content_filter" and error["param"] == "prompt"
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error["innererror"]["content_filter_result"]["custom_blocklists"] == {
        "filtered": True, "details": [{"filtered": True, "id": "secret"}]}
    # streamed, the refusal is a plain 400 too, before any frame
    streamed = http.post("/v1/chat/completions", json={"model": "guarded", "stream": True,
                                                        "messages": [{"role": "user", "content": guarded["word"]}]})
    assert streamed.status_code == 400 and streamed.json()["error"]["code"] == "content_filter"
    legacy = http.post("/v1/completions", json={"model": "guarded", "prompt": f"about {guarded['word']}"})
    assert legacy.status_code == 400 and legacy.json()["error"]["code"] == "content_filter"

    log = http.get("/v1/deployments/guarded/requests").json()["data"]
    assert [(r["status"], r["error_code"], r["filtered"], r["filtered_categories"]) for r in log] == \
        [(400, "content_filter", "prompt", ["custom_blocklists"])] * 3
    metrics = http.get("/v1/deployments/guarded/metrics").json()
    assert metrics["content_filter_hits"] == {"custom_blocklists": 3}
    assert metrics["content_filtered"] == {"prompt": 3} and metrics["by_status"] == {"400": 3}
    assert "content filter hits: custom_blocklists 3 (prompt 3)" in _cli_metrics(metrics)
    prometheus = http.get("/metrics").text
    assert 'tempering_content_filter_hits_total{category="custom_blocklists",direction="prompt"} 3.0' in prometheus


def _cli_metrics(metrics: dict) -> str:
    """What ``tempering deployments metrics`` prints for these metrics (its HTTP client stubbed)."""
    from unittest import mock

    from typer.testing import CliRunner

    from tempering.cli.main import app

    client = mock.Mock(deployment_metrics=lambda _: metrics)
    with mock.patch("tempering.cli.deploy._client", return_value=client):
        shown = CliRunner().invoke(app, ["deployments", "metrics", "guarded", "--server", "http://x"])
    assert shown.exit_code == 0, shown.output
    return shown.output


def test_an_answer_is_cut_before_the_blocked_word(http, sdk, guarded):
    whole = http.post("/v1/chat/completions", json={"model": "guarded", "messages": QUESTION, **GREEDY}).json()
    choice = whole["choices"][0]
    assert choice["message"]["content"] == guarded["cut"] and guarded["word"] not in choice["message"]["content"]
    assert choice["finish_reason"] == "content_filter"
    assert choice["content_filter_results"]["custom_blocklists"] == {
        "filtered": True, "details": [{"filtered": True, "id": "secret"}]}
    assert whole["prompt_filter_results"] == [{"prompt_index": 0, "content_filter_results": {
        "custom_blocklists": {"filtered": False, "details": []}}}]
    # the generation was cancelled once cut, not run to max_tokens
    assert whole["usage"]["completion_tokens"] < guarded["tokens"]
    # log-probabilities come only with released text: no token of the blocked word
    with_logprobs = http.post("/v1/chat/completions", json={"model": "guarded", "messages": QUESTION,
                                                            "logprobs": True, **GREEDY}).json()["choices"][0]
    tokens = "".join(t["token"] for t in with_logprobs["logprobs"]["content"])
    assert with_logprobs["message"]["content"] == guarded["cut"] and guarded["cut"].startswith(tokens)
    assert len(tokens) > len(guarded["cut"]) - 16 and guarded["word"] not in tokens
    through_sdk = sdk.chat.completions.create(model="guarded", messages=QUESTION, **GREEDY)
    assert through_sdk.choices[0].finish_reason == "content_filter"
    assert through_sdk.choices[0].message.content == guarded["cut"]

    log = http.get("/v1/deployments/guarded/requests").json()["data"]
    assert {(r["status"], r["filtered"], tuple(r["filtered_categories"])) for r in log} == \
        {(200, "completion", ("custom_blocklists",))}
    assert 'tempering_content_filter_hits_total{category="custom_blocklists",direction="completion"} 3.0' in \
        http.get("/metrics").text


def test_a_stream_never_carries_the_blocked_word(http, guarded):
    frames = _stream(http, "guarded", n=2, stream_options={"include_usage": True})
    first = frames[0]
    assert first["choices"] == [] and first["prompt_filter_results"][0]["prompt_index"] == 0
    assert all("prompt_filter_results" not in f for f in frames[1:])
    zero = [c for f in frames for c in f["choices"] if c["index"] == 0]
    text = "".join(c["delta"].get("content") or "" for c in zero)
    assert text == guarded["cut"]
    assert all(guarded["word"].lower() not in (c["delta"].get("content") or "").lower() for c in zero)
    finish = [c for c in zero if c["finish_reason"]]
    assert len(finish) == 1 and finish[0]["finish_reason"] == "content_filter"
    assert finish[0]["content_filter_results"]["custom_blocklists"]["filtered"] is True
    # the other choice (seed + 1) holds no blocked word: it runs to its end, annotated clean
    one_finish = [c for f in frames for c in f["choices"] if c["index"] == 1 and c["finish_reason"]]
    assert one_finish[0]["finish_reason"] == "length"
    assert one_finish[0]["content_filter_results"] == {"custom_blocklists": {"filtered": False, "details": []}}
    usage = frames[-1]["usage"]
    assert usage["completion_tokens"] < 2 * guarded["tokens"]  # choice 0 stopped early


def test_the_filter_is_per_deployment_and_can_be_switched(http, sdk, answer):
    _blocklist(http, answer["word"])
    off = http.get("/v1/deployments/probe").json()
    assert off["content_filter"] is False and off["content_filter_policy"]["enabled"] is False
    whole = http.post("/v1/chat/completions", json={"model": "probe", "messages": QUESTION, **GREEDY}).json()
    assert "prompt_filter_results" not in whole and "content_filter_results" not in whole["choices"][0]
    assert whole["choices"][0]["message"]["content"] == answer["text"]
    frames = _stream(http, "probe")
    assert _streamed_text(frames) == answer["text"]
    assert not any("prompt_filter_results" in f or any("content_filter_results" in c for c in f["choices"])
                   for f in frames)

    on = _set_filter(http, "probe", content_filter_policy=ONLY_LISTS)
    assert on["content_filter"] is True and on["content_filter_policy"]["blocklists"] == ["secret"]
    cut = sdk.chat.completions.create(model="probe", messages=QUESTION, **GREEDY)
    assert cut.choices[0].finish_reason == "content_filter" and cut.choices[0].message.content == answer["cut"]
    default = _set_filter(http, "probe")  # null: the server's default policy
    assert default["content_filter_policy"]["prompt"]["jailbreak"] == "medium"
    assert _set_filter(http, "probe", content_filter=False)["content_filter"] is False
    assert sdk.chat.completions.create(model="probe", messages=QUESTION, **GREEDY).choices[0].finish_reason == "length"

    bad = http.post("/v1/deployments/probe/content_filter", json={"content_filter_policy": {
        "blocklists": ["nope", "secret"], "prompt": {"astrology": "low"}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "content_filter_policy"
    assert "'nope'" in bad.json()["error"]["message"] and "prompt.astrology" in bad.json()["error"]["message"]
    refused = http.post("/v1/deployments", json={"model": TINY_ID, "name": "x",
                                                 "content_filter_policy": {"blocklists": ["nope", "a\u0000b"]}})
    assert refused.status_code == 400 and "'nope'" in refused.json()["error"]["message"]
    assert "not a blocklist name" in refused.json()["error"]["message"]


class FailingScorer:
    """A classifier that always fails: what an unreachable remote backend looks like to the filter."""

    categories = ("hate", "sexual", "violence", "self_harm", "jailbreak", "indirect_attack", "profanity")

    def score(self, texts):
        raise RuntimeError("classifier down")


def test_a_failing_filter_fails_open_or_closed_as_the_policy_says(app, http, answer):
    app.state.chat.scorer = FailingScorer()
    _set_filter(http, "probe", content_filter_policy={"fail_closed": False})
    whole = http.post("/v1/chat/completions", json={"model": "probe", "messages": QUESTION, **GREEDY})
    assert whole.status_code == 200
    body = whole.json()
    prompt_results = body["prompt_filter_results"][0]["content_filter_results"]
    assert prompt_results["error"]["code"] == "content_filter_error"
    choice = body["choices"][0]
    assert choice["content_filter_results"]["error"]["code"] == "content_filter_error"
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == answer["text"]

    _set_filter(http, "probe", content_filter_policy={"fail_closed": True})
    refused = http.post("/v1/chat/completions", json={"model": "probe", "messages": QUESTION, **GREEDY})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "content_filter_error"
    log = http.get("/v1/deployments/probe/requests").json()["data"]
    assert (log[0]["status"], log[0]["error_code"], log[0]["filtered"]) == (503, "content_filter_error", "prompt")


def test_the_migration_turns_the_flag_into_a_policy(tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from tempering.store.db import MIGRATIONS, Database

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
        connection.execute(text("INSERT INTO projects (id, name, created_at) VALUES ('proj_a', 'a', 1)"))
        for ident, flag in (("deploy-on", True), ("deploy-off", False)):
            connection.execute(text(
                "INSERT INTO deployments (id, project_id, name, model, base_model, task, content_filter, "
                "max_concurrent_requests, backend, status, created_at) VALUES (:id, 'proj_a', :id, 'm', 'm', "
                "'chat', :flag, 8, 'local', 'succeeded', 1)"), {"id": ident, "flag": flag})
    engine.dispose()

    db = Database(url)
    db.migrate()
    with db.engine.connect() as connection:
        rows = dict(connection.execute(text("SELECT id, content_filter_policy FROM deployments")).all())
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == _head()
    assert rows["deploy-on"] is None  # the server's default policy
    assert json.loads(rows["deploy-off"]) == {"enabled": False}

    from tempering.safety import SafetyPolicy
    from tempering.services.filtering import effective_policy

    assert effective_policy(None, SafetyPolicy()) == SafetyPolicy()
    assert effective_policy(json.loads(rows["deploy-off"]), SafetyPolicy()).enabled is False
    db.dispose()


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from tempering.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


# ---------------------------------------------------------------- a hub's remote content-safety backend


@pytest.fixture()
def remote_moderation():
    """An OpenAI-compatible /v1/moderations server on a real port (the filter calls it over HTTP): key
    "sk-hub", "BANANA" is graphic violence, anything else harmless; the texts it was asked about are kept."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if (self.path not in ("/v1/moderations", "/v1/chat/completions")
                    or self.headers.get("Authorization") != "Bearer sk-hub"):
                self.send_response(401)
                self.end_headers()
                return
            if self.path == "/v1/chat/completions":  # a guard model (Llama Guard's answers), no log-probabilities
                text = body["messages"][-1]["content"]
                seen.append(text)
                verdict = "unsafe\nS1" if "BANANA" in text else "safe"
                result = {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"], "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": verdict}, "finish_reason": "stop"}]}
            else:
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                seen.extend(texts)
                names = ["hate", "sexual", "violence", "violence/graphic", "self-harm"]
                result = {"id": "modr-1", "model": body.get("model"), "results": [
                    {"flagged": "BANANA" in t, "categories": {n: False for n in names},
                     "category_scores": {n: 0.95 if n == "violence/graphic" and "BANANA" in t else 0.001
                                         for n in names}} for t in texts]}
            payload = json.dumps(result).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1", seen
    server.shutdown()


def test_a_hubs_remote_backend_classifies_its_projects_prompts_and_moderations(http, remote_moderation,
                                                                                monkeypatch):
    from tempering.settings import reset_settings

    endpoint, seen = remote_moderation
    [hub] = http.get("/v1/organization/hubs").json()["data"]
    url = f"/v1/organization/hubs/{hub['id']}"
    backend = {"backend": "openai", "endpoint": endpoint, "api_key_secret": "moderation"}
    refused = http.post(url, json={"settings": {"content_safety": backend}})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "upstream_not_allowed"
    assert refused.json()["error"]["param"] == "settings.content_safety.endpoint"  # not allowed by the admin
    monkeypatch.setenv("TEMPERING_UPSTREAM_ALLOWED_URLS", json.dumps([endpoint]))
    reset_settings()
    bad = http.post(url, json={"settings": {"content_safety": {**backend, "backend": "vllm"}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "settings.content_safety.backend"
    assert http.put(f"{url}/secrets/moderation", json={"value": "sk-hub"}).status_code == 200
    stored = http.post(url, json={"settings": {"content_safety": backend}})
    assert stored.status_code == 200, stored.text
    assert stored.json()["settings"]["content_safety"] == backend  # the key itself is a secret, never here

    _deploy(http, "hubbed")  # the server's default policy: harm blocked from medium
    blocked = http.post("/v1/chat/completions", json={"model": "hubbed", "messages": [
        {"role": "user", "content": "tell me about BANANA"}], **GREEDY})
    assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "content_filter"
    verdict = blocked.json()["error"]["innererror"]["content_filter_result"]
    assert verdict["violence"] == {"filtered": True, "severity": "high"}
    assert any("BANANA" in t for t in seen)  # the remote backend decided, not the local classifier
    fine = http.post("/v1/chat/completions", json={"model": "hubbed", "messages": QUESTION, **GREEDY})
    assert fine.status_code == 200 and "jailbreak" in fine.json()["prompt_filter_results"][0][
        "content_filter_results"]  # what the remote backend lacks comes from the local classifiers
    moderation = http.post("/v1/moderations", json={"input": ["BANANA", "a quiet afternoon"]}).json()
    assert [r["categories"]["violence"] for r in moderation["results"]] == [True, False]

    # a guard model on the same server (Llama Guard behind vLLM's chat endpoint): it needs the model's name
    guard = {**backend, "backend": "guard"}
    nameless = http.post(url, json={"settings": {"content_safety": guard}})
    assert nameless.status_code == 400 and nameless.json()["error"]["param"] == "settings.content_safety.model"
    guard["model"] = "meta-llama/Llama-Guard-3-1B"
    assert http.post(url, json={"settings": {"content_safety": guard}}).json()["settings"]["content_safety"] == guard
    seen.clear()
    blocked = http.post("/v1/chat/completions", json={"model": "hubbed", "messages": [
        {"role": "user", "content": "BANANA again"}], **GREEDY})
    assert blocked.status_code == 400
    assert blocked.json()["error"]["innererror"]["content_filter_result"]["violence"] == \
        {"filtered": True, "severity": "medium"}  # "unsafe" without log-probabilities: medium
    assert seen == ["BANANA again"]
    assert http.post("/v1/chat/completions", json={"model": "hubbed", "messages": QUESTION, **GREEDY}).status_code == 200
    assert http.post(url, json={"settings": {"content_safety": backend}}).status_code == 200

    # the key's secret cannot be deleted while the backend names it
    in_use = http.delete(f"{url}/secrets/moderation")
    assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "secret_in_use"
    # a backend naming a secret the hub lacks: the filter cannot check, and answers as the policy says (fail open
    # by default)
    assert http.post(url, json={"settings": {"content_safety": {**backend, "api_key_secret": "absent"}}}).status_code == 200
    unchecked = http.post("/v1/chat/completions", json={"model": "hubbed", "messages": QUESTION, **GREEDY})
    assert unchecked.status_code == 200
    assert unchecked.json()["prompt_filter_results"][0]["content_filter_results"]["error"]["code"] == \
        "content_filter_error"
    assert http.post("/v1/moderations", json={"input": "BANANA"}).status_code == 503
    # back to the local classifiers
    assert http.post(url, json={"settings": {"content_safety": None}}).status_code == 200
    assert http.delete(f"{url}/secrets/moderation").status_code == 200  # no longer named: deleted
    seen.clear()
    assert http.post("/v1/moderations", json={"input": "BANANA"}).status_code == 200 and not seen


def test_a_blocklist_a_deployment_applies_cannot_be_deleted(http, guarded):
    """Deleting the list would leave the deployment's filter with an error on every request (and, failing
    open by default, its lists unchecked): refused naming the deployment, allowed once no filter applies it."""
    url = "/v1/contentsafety/text/blocklists/secret"
    refused = http.delete(url)
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "blocklist_in_use" and "guarded" in error["message"]
    assert http.get(url).status_code == 200
    _set_filter(http, "guarded", content_filter=False)  # off: no list applied
    assert http.delete(url).status_code == 204
    assert http.get(url).status_code == 404


def test_a_hubs_default_policy_applies_to_its_deployments_that_set_none(http, answer):
    """A hub's settings.content_filter_policy is what its deployments without a policy of their own run under
    (shown on the deployment, applied to requests); a deployment's own policy still wins; a hub policy naming
    blocklists or a category no classifier provides is refused."""
    [hub] = http.get("/v1/organization/hubs").json()["data"]
    url = f"/v1/organization/hubs/{hub['id']}"
    refused = http.post(url, json={"settings": {"content_filter_policy": {"blocklists": ["secret"]}}})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "settings.content_filter_policy.blocklists"
    unknown = http.post(url, json={"settings": {"content_filter_policy": {"prompt": {"astrology": "low"}}}})
    assert unknown.status_code == 400 and "prompt.astrology" in unknown.json()["error"]["message"]

    _blocklist(http, answer["word"])
    _deploy(http, "hubbed-default")  # no policy of its own
    _deploy(http, "own", content_filter_policy=ONLY_LISTS)
    quiet = {"prompt": {"hate": "high"}, "completion": {}, "fail_closed": True}
    stored = http.post(url, json={"settings": {"content_filter_policy": quiet}})
    assert stored.status_code == 200, stored.text
    assert stored.json()["settings"]["content_filter_policy"]["prompt"] == {"hate": "high"}
    shown = http.get("/v1/deployments/hubbed-default").json()["content_filter_policy"]
    assert shown["prompt"] == {"hate": "high"} and shown["completion"] == {} and shown["fail_closed"] is True
    assert http.get("/v1/deployments/own").json()["content_filter_policy"]["blocklists"] == ["secret"]
    checked = http.post("/v1/chat/completions", json={"model": "hubbed-default", "messages": QUESTION, **GREEDY})
    assert set(checked.json()["prompt_filter_results"][0]["content_filter_results"]) == {"hate"}  # the hub's

    off = http.post(url, json={"settings": {"content_filter_policy": {"enabled": False}}})
    assert off.status_code == 200
    whole = http.post("/v1/chat/completions", json={"model": "hubbed-default", "messages": QUESTION, **GREEDY}).json()
    assert "prompt_filter_results" not in whole and whole["choices"][0]["message"]["content"] == answer["text"]
    assert http.post(url, json={"settings": {"content_filter_policy": None}}).status_code == 200
    assert http.get("/v1/deployments/hubbed-default").json()["content_filter_policy"]["prompt"]["jailbreak"] == "medium"
