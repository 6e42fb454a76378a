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


# ---------------------------------------------------------------- blocklists (Azure's text/blocklists shapes)

BL = "/v1/contentsafety/text/blocklists"


@pytest.fixture()
def http(app):
    with TestClient(app, headers={"Authorization": f"Bearer {app.state.initial_api_key}"}) as client:
        yield client


def test_blocklists_api_round_trip(http, app):
    assert http.patch(f"{BL}/secrets", json={"description": "launch names"}).status_code == 201
    updated = http.patch(f"{BL}/secrets?api-version=2024-09-01", json={"description": "code names"})
    assert updated.status_code == 200 and updated.json() == {"blocklistName": "secrets", "description": "code names"}
    added = http.post(f"{BL}/secrets:addOrUpdateBlocklistItems", json={"blocklistItems": [
        {"text": "Project Zorblax", "description": "launch"}, {"text": r"API-\d{4}", "isRegex": True}]})
    assert added.status_code == 200, added.text
    items = added.json()["blocklistItems"]
    assert [(i["text"], i["isRegex"]) for i in items] == [("Project Zorblax", False), (r"API-\d{4}", True)]
    again = http.post(f"{BL}/secrets:addOrUpdateBlocklistItems", json={"blocklistItems": [
        {"text": "Project Zorblax", "description": "renamed"}]}).json()["blocklistItems"]
    assert again[0]["blocklistItemId"] == items[0]["blocklistItemId"]  # same text: updated, not duplicated
    listed = http.get(f"{BL}/secrets/blocklistItems").json()["value"]
    assert len(listed) == 2 and listed[0]["description"] == "renamed"
    assert http.get(BL).json() == {"value": [{"blocklistName": "secrets", "description": "code names"}]}

    # the filter applies what is stored
    from sqlalchemy import select

    from tempering.safety import SafetyPolicy, check_prompt
    from tempering.safety import blocklist_store as store
    from tempering.store.models import Project

    with app.state.db.session() as session:
        project = session.scalars(select(Project)).first().id
        compiled = store.load(session, project, ["secrets"])
    verdict = check_prompt("my key is API-1234", SafetyPolicy(prompt={}), compiled)
    assert verdict.filtered and verdict.prompt_filter_results[0]["content_filter_results"]["custom_blocklists"] == \
        {"filtered": True, "details": [{"filtered": True, "id": "secrets"}]}

    assert http.post(f"{BL}/secrets:removeBlocklistItems",
                     json={"blocklistItemIds": [items[1]["blocklistItemId"]]}).status_code == 204
    assert [i["text"] for i in http.get(f"{BL}/secrets/blocklistItems").json()["value"]] == ["Project Zorblax"]
    with app.state.db.session() as session:
        assert not check_prompt("API-1234", SafetyPolicy(prompt={}), store.load(session, project, ["secrets"])).filtered
    assert http.delete(f"{BL}/secrets").status_code == 204
    assert http.get(f"{BL}/secrets").status_code == 404
    assert http.get(BL).json() == {"value": []}


def test_blocklist_items_are_validated_all_at_once(http):
    http.patch(f"{BL}/b", json={})
    bad = http.post(f"{BL}/b:addOrUpdateBlocklistItems", json={"blocklistItems": [
        {"text": "(unclosed", "isRegex": True}, {"text": "fine"}, {"text": "a*", "isRegex": True}]})
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "blocklistItems" and "[0]" in error["message"] and "[2]" in error["message"]
    assert http.get(f"{BL}/b/blocklistItems").json()["value"] == []  # nothing stored
    many = [{"text": f"x{i}y", "isRegex": True} for i in range(101)]
    too_many = http.post(f"{BL}/b:addOrUpdateBlocklistItems", json={"blocklistItems": many[:100]})
    assert too_many.status_code == 200
    refused = http.post(f"{BL}/b:addOrUpdateBlocklistItems", json={"blocklistItems": many[100:]})
    assert refused.status_code == 400 and "at most 100 regular expressions" in refused.json()["error"]["message"]
    assert http.patch(f"{BL}/bad name!", json={}).status_code in (400, 404)
    assert http.post(f"{BL}/missing:addOrUpdateBlocklistItems",
                     json={"blocklistItems": [{"text": "x"}]}).status_code == 404


def test_blocklists_are_project_scoped(http, app):
    from tempering.services.projects import project_key
    from tempering.store.models import Project

    with app.state.db.session() as session:
        other = Project(name="other")
        session.add(other)
        session.flush()
        other_key = project_key(session, other.id, "other")
    http.patch(f"{BL}/mine", json={})
    theirs = {"Authorization": f"Bearer {other_key}"}
    assert http.get(f"{BL}/mine", headers=theirs).status_code == 404
    assert http.get(BL, headers=theirs).json() == {"value": []}
    assert http.patch(f"{BL}/mine", json={}, headers=theirs).status_code == 201  # their own list of that name


def _cli_against(app, monkeypatch, module: str):
    """The CLI's ``module`` (and ``tempering.cli.deploy``) talking to ``app`` in process, as its admin."""
    from tempering.cli import deploy
    from tempering.client import TemperingClient

    def client(server, api_key):
        c = TemperingClient(server, "tk-x")
        c.http = TestClient(app, base_url="http://testserver/v1",
                            headers={"Authorization": f"Bearer {app.state.initial_api_key}"})
        return c

    monkeypatch.setattr(deploy, "_client", client)
    monkeypatch.setattr(f"tempering.cli.{module}._client", client)


def test_blocklists_cli(app, monkeypatch):
    from tempering.cli.main import app as cli

    _cli_against(app, monkeypatch, "blocklists")
    run = CliRunner().invoke
    server = ["--server", "http://testserver"]
    assert run(cli, ["blocklists", "create", "words", *server]).exit_code == 0
    added = run(cli, ["blocklists", "add", "words", "zorblax", "quux", *server, "--json"])
    assert added.exit_code == 0, added.output
    ids = [i["blocklistItemId"] for i in json.loads(added.output)["blocklistItems"]]
    listed = run(cli, ["blocklists", "list", *server, "words", "--json"])
    assert [r["text"] for r in json.loads(listed.output)] == ["zorblax", "quux"]
    assert run(cli, ["blocklists", "remove", "words", ids[0], *server]).exit_code == 0
    assert run(cli, ["blocklists", "delete", "words", *server]).exit_code == 0
    missing = run(cli, ["blocklists", "delete", "words", *server])
    assert missing.exit_code == 1 and "No such blocklist" in missing.output
    # a typed name stays the list's name: never another request (a query string, a step up the path)
    for odd, said in (("words?x=1", "should match pattern"), ("..", "not a valid API path")):
        refused = run(cli, ["blocklists", "list", *server, odd])
        assert refused.exit_code == 1 and said in refused.output, (odd, refused.output)


def _category_examples() -> bytes:
    """Questions comparing us with competitors (1) and ordinary support questions (0), as JSON Lines."""
    import random

    rng = random.Random(0)
    brands = ["Zorblax", "Quintor", "Vexamo"]
    topics = ["the weather", "my invoice", "a refund", "the opening hours", "my password", "a delivery"]
    rows = [{"text": f"Is {rng.choice(brands)} {w} than you?", "label": 1}
            for w in ("cheaper", "better", "faster", "nicer", "safer", "bigger") for _ in range(8)]
    rows += [{"text": f"Can you help me with {t} {rng.choice(['today', 'please', 'now', 'again'])}?", "label": 0}
             for t in topics for _ in range(8)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_a_custom_category_is_trained_named_by_a_policy_and_deleted(http, app):
    """A server administrator trains a custom category from a project file; policies may name it at once; it
    cannot be deleted while one does; a project's key without the server role may list but not train."""
    from tempering.safety import SafetyPolicy, check_prompt
    from tempering.services.projects import project_key
    from tempering.store.models import Project

    data = _category_examples()
    file_id = http.post("/v1/files", files={"file": ("competitors.jsonl", data)},
                        data={"purpose": "fine-tune"}).json()["id"]
    before = {c["name"]: c["kind"] for c in http.get("/v1/contentsafety/categories").json()["data"]}
    assert before["hate"] == "built-in" and before["profanity"] == "built-in" and "competitors" not in before

    with app.state.db.session() as session:
        project_id = session.query(Project).first().id
        owner_key = project_key(session, project_id, "owner-only")  # an Owner, not a server administrator
    owner = {"Authorization": f"Bearer {owner_key}"}
    assert http.post("/v1/contentsafety/categories", headers=owner,
                     json={"name": "competitors", "training_file": file_id}).status_code == 403
    assert http.get("/v1/contentsafety/categories", headers=owner).status_code == 200
    bad = http.post("/v1/contentsafety/categories", json={"name": "hate", "training_file": file_id})
    assert bad.status_code == 409 and bad.json()["error"]["code"] == "category_exists"

    made = http.post("/v1/contentsafety/categories", json={"name": "competitors", "training_file": file_id})
    assert made.status_code == 200, made.text
    assert made.json()["kind"] == "custom" and made.json()["valid_average_precision"] > 0.9
    policy = SafetyPolicy(prompt={"competitors": "medium"}, completion={})
    assert check_prompt("Is Quintor cheaper than you?", policy).filtered
    assert not check_prompt("Can you help me with my invoice today?", policy).filtered

    from tempering.store.models import Deployment

    with app.state.db.session() as session:
        session.add(Deployment(project_id=project_id, name="guarded", model="m", base_model="m",
                               content_filter_policy=policy.model_dump()))
    in_use = http.delete("/v1/contentsafety/categories/competitors")
    assert in_use.status_code == 409 and "deployment guarded" in in_use.json()["error"]["message"]
    with app.state.db.session() as session:
        session.query(Deployment).filter_by(name="guarded").one().content_filter_policy = None
    assert http.delete("/v1/contentsafety/categories/hate").status_code == 403
    # a deletion whose transaction does not commit leaves the category, its files and no audit entry
    from tempering.services import safety_categories
    from tempering.settings import get_settings

    with pytest.raises(RuntimeError, match="commit failed"), app.state.db.session() as session:
        safety_categories.delete(session, None, "competitors", get_settings())
        raise RuntimeError("commit failed")
    assert "competitors" in {c["name"] for c in http.get("/v1/contentsafety/categories").json()["data"]}
    assert check_prompt("Is Quintor cheaper than you?", policy).filtered
    assert http.delete("/v1/contentsafety/categories/competitors").status_code == 204
    assert "competitors" not in {c["name"] for c in http.get("/v1/contentsafety/categories").json()["data"]}
    assert http.delete("/v1/contentsafety/categories/competitors").status_code == 404


def test_categories_cli(app, monkeypatch, tmp_path):
    from tempering.cli.main import app as cli

    _cli_against(app, monkeypatch, "categories")
    examples = tmp_path / "competitors.jsonl"
    examples.write_bytes(_category_examples())
    run = CliRunner().invoke
    server = ["--server", "http://testserver"]
    trained = run(cli, ["categories", "train", "competitors", str(examples), *server])
    assert trained.exit_code == 0 and "Trained competitors on" in trained.output, trained.output
    listed = run(cli, ["categories", "list", *server, "--json"])
    assert {c["name"]: c["kind"] for c in json.loads(listed.output)}["competitors"] == "custom"
    assert "competitors" in run(cli, ["categories", "list", *server]).output
    assert run(cli, ["categories", "delete", "competitors", *server]).exit_code == 0
    missing = run(cli, ["categories", "delete", "competitors", *server])
    assert missing.exit_code == 1 and "No such category" in missing.output
