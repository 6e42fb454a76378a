"""Structured outputs: ``response_format`` json_object and json_schema on chat completions, enforced per row of
a batch by llguidance (serve.constrain), through the official SDK's ``chat.completions.parse``; the label
"choice" constraint the evaluation uses. The tiny random model writes nonsense, so whatever it produces under a
constraint must still parse and validate."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import openai
import pytest
from conftest import PHI3_ID, TINY_ID
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from tempering.serve.params import SamplingParams


class Verdict(BaseModel):
    answer: Literal["yes", "no", "maybe"]
    confident: bool
    tags: list[Literal["red", "green"]] = Field(max_length=2)  # bounded: a random model never stops a list


QUESTION = [{"role": "user", "content": "Is the sky green?"}]


@pytest.fixture()
def client(tiny_model):
    from tempering.api.app import create_app
    from tempering.settings import get_settings

    app = create_app(get_settings(), workers=0)
    with TestClient(app, headers={"Authorization": f"Bearer {app.state.initial_api_key}"}) as http:
        assert http.post("/v1/deployments", json={"model": TINY_ID, "name": "tiny", "content_filter": False}
                         ).status_code == 200
        yield http, openai.OpenAI(base_url="http://testserver/v1", api_key=app.state.initial_api_key,
                                  max_retries=0, http_client=http)


def test_the_sdk_parses_a_pydantic_model_from_a_constrained_answer(client):
    _, sdk = client
    for seed in (1, 2, 3):  # sampled at a high temperature: the grammar, not luck, keeps the answer valid
        completion = sdk.chat.completions.parse(model="tiny", messages=QUESTION, response_format=Verdict,
                                                temperature=1.5, seed=seed, max_tokens=200)
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, Verdict)


def test_json_object_and_free_text_in_one_batch(client):
    """Constrained and unconstrained rows decode together; each keeps its own rules."""
    http, _ = client

    def ask(body):
        return http.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION, "max_tokens": 48,
                                                       "temperature": 1.0, "seed": 7, **body})

    async def both():
        return await asyncio.gather(asyncio.to_thread(ask, {"response_format": {"type": "json_object"},
                                                            "max_tokens": 300}),
                                    asyncio.to_thread(ask, {}))

    constrained, free = asyncio.run(both())
    assert constrained.status_code == free.status_code == 200
    answer = constrained.json()["choices"][0]
    if answer["finish_reason"] == "stop":
        assert isinstance(json.loads(answer["message"]["content"]), dict)
    else:  # the budget ran out mid-object: what was written is still a prefix of one
        assert answer["message"]["content"].startswith("{")
    assert free.json()["choices"][0]["message"]["content"] != answer["message"]["content"]


def test_a_schema_the_engine_cannot_enforce_is_refused_up_front(client):
    http, _ = client
    bad = http.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"
    unknown = http.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION,
                                                      "response_format": {"type": "xml"}})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "response_format.type"


@pytest.mark.parametrize("model", [TINY_ID, PHI3_ID])
def test_a_choice_constraint_answers_only_a_label(request, model):
    """The evaluation's label answers (an enum of the training labels), on both architectures (Phi-3's logits
    are wider than its tokenizer)."""
    from tempering.serve.engine import TransformersEngine

    request.getfixturevalue("tiny_model" if model == TINY_ID else "tiny_phi3")
    labels = ["card_arrival", "card_linking", "exchange_rate", "lost_or_stolen_card"]
    engine = TransformersEngine(model, max_batch=4, threads=1)
    try:
        engine.wait_ready()
        prompt = engine.tokenizer("Which intent? My card has not arrived.")["input_ids"]

        async def answers():
            async def one(seed):
                params = SamplingParams(max_tokens=20, temperature=1.5, seed=seed,
                                        response_format={"type": "choice", "choices": labels})
                return "".join([c.text async for c in engine.generate(prompt, params)])

            return await asyncio.gather(*(one(s) for s in range(6)))

        assert set(asyncio.run(answers())) <= set(labels)
    finally:
        engine.stop()
