"""The llama.cpp backend of a deployment: served from the GGUF Tempering exports for it. The serving tests run
where llama-cpp-python is installed (the bench extra; it builds llama.cpp from source); the refusal where it
is not runs everywhere."""

from __future__ import annotations

import pytest
from conftest import TINY_ID
from fastapi.testclient import TestClient

QUESTION = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture()
def http(tiny_model):
    from tempering.api.app import create_app
    from tempering.settings import get_settings

    app = create_app(get_settings(), workers=0)
    with TestClient(app, headers={"Authorization": f"Bearer {app.state.initial_api_key}"}) as client:
        yield client


def test_without_llama_cpp_the_backend_is_refused_up_front(http, monkeypatch):
    from tempering.serve import llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    refused = http.post("/v1/deployments", json={"model": TINY_ID, "name": "fast", "backend": "llama.cpp"})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "backend" and "llama-cpp-python" in refused.json()["error"]["message"]


def test_a_llama_cpp_deployment_answers_as_the_embedded_engine_does(http):
    pytest.importorskip("llama_cpp")
    for name, backend in (("embedded", "local"), ("fast", "llama.cpp")):
        created = http.post("/v1/deployments", json={"model": TINY_ID, "name": name, "backend": backend,
                                                     "content_filter": False})
        assert created.status_code == 200, created.text
    answers = {}
    for name in ("embedded", "fast"):
        response = http.post("/v1/chat/completions", json={"model": name, "messages": QUESTION, "max_tokens": 8,
                                                           "temperature": 0})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["usage"]["completion_tokens"] == 8 or body["choices"][0]["finish_reason"] == "stop"
        answers[name] = body["choices"][0]["message"]["content"]
    assert answers["fast"][:4] == answers["embedded"][:4]  # f16 weights: the first tokens agree
    with http.stream("POST", "/v1/chat/completions", json={"model": "fast", "messages": QUESTION, "max_tokens": 4,
                                                           "stream": True}) as stream:
        assert stream.status_code == 200 and "[DONE]" in "".join(stream.iter_text())
    refused = http.post("/v1/chat/completions", json={"model": "fast", "messages": QUESTION,
                                                      "response_format": {"type": "json_object"}})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "response_format"
