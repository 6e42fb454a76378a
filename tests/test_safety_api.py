"""``/v1/moderations`` through the official ``openai`` SDK against the app in-process, and ``tempering
moderate``."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

UNCLASSIFIED = ("harassment", "harassment/threatening", "hate/threatening", "illicit", "illicit/violent",
                "self-harm/intent", "self-harm/instructions", "sexual/minors", "violence/graphic")


@pytest.fixture()
def app(tempering_home):
    from tempering.api.app import create_app
    from tempering.settings import get_settings

    return create_app(get_settings(), workers=0)


@pytest.fixture()
def client(app):
    with TestClient(app) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key=app.state.initial_api_key, max_retries=0,
                            http_client=http)


def test_moderations_through_the_openai_sdk(client):
    response = client.moderations.create(model="omni-moderation-latest",
                                         input=["I will kill you and burn your house down.",
                                                "What is a good recipe for banana bread?"])
    assert response.model == "tempering-safety-v1" and response.id.startswith("modr-")
    threat, bread = response.results
    assert threat.flagged and threat.categories.violence and threat.category_scores.violence > 0.5
    assert not bread.flagged and bread.category_scores.violence < 0.5
    dumped = bread.model_dump(by_alias=True)
    for name in UNCLASSIFIED:
        assert dumped["categories"][name] is False and dumped["category_scores"][name] == 0
        assert dumped["category_applied_input_types"][name] == []
    for name in ("hate", "sexual", "violence", "self-harm"):
        assert dumped["category_applied_input_types"][name] == ["text"]


def test_moderations_input_shapes_and_errors(client, app):
    one = client.moderations.create(input="hello there")
    assert len(one.results) == 1 and not one.results[0].flagged
    parts = client.moderations.create(input=[{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}])
    assert len(parts.results) == 1
    with pytest.raises(openai.BadRequestError) as caught:
        client.moderations.create(input=[{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])
    assert caught.value.body["param"] == "input"
    with pytest.raises(openai.NotFoundError):
        client.moderations.create(input="hi", model="gpt-4o")
    with TestClient(app) as http:
        anonymous = openai.OpenAI(base_url="http://testserver/v1", api_key="tk-wrong", max_retries=0, http_client=http)
        with pytest.raises(openai.AuthenticationError):
            anonymous.moderations.create(input="hi")


def test_moderate_cli_json():
    from tempering.cli.main import app as cli

    result = CliRunner().invoke(cli, ["moderate", "I will kill you", "banana bread", "--json", "--filter"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["results"]
    assert rows[0]["flagged"] and not rows[1]["flagged"]
    assert rows[0]["content_filter_results"]["violence"]["filtered"] is True


def test_moderate_cli_file(tmp_path):
    from tempering.cli.main import app as cli

    texts = tmp_path / "t.txt"
    texts.write_text("banana bread\nsourdough starter\n")
    result = CliRunner().invoke(cli, ["moderate", "--file", str(texts), "--lines", "--json"])
    assert result.exit_code == 0 and len(json.loads(result.output)["results"]) == 2
    assert CliRunner().invoke(cli, ["moderate"]).exit_code == 1
