"""The web portal through FastAPI's TestClient: sessions (sign in, lockout, sign out, sessions ended by a password
reset), CSRF refusal, role-based visibility, the catalog's search, the data page's problems with their lines,
the language switch, and a wizard-created job whose stored config equals the API's for the same choices.
The browser walk of the whole flow is tests/test_portal_browser.py."""

from __future__ import annotations

import json
import re

import pytest
from conftest import chat_example
from fastapi.testclient import TestClient
from portal_fixtures import (  # noqa: F401  (app_fixture, client_fixture: the fixtures)
    BAD,
    TRAIN,
    add_user,
    admin,
    app_fixture,
    client_fixture,
    csrf_of,
    sign_in,
)


def test_pages_need_a_session_and_sign_in_sets_a_safe_cookie(client, app):
    first = client.get("/catalog", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/signin?next=/catalog"
    wrong = sign_in(client, "admin", "not-the-password")
    assert wrong.status_code == 401 and "Incorrect username or password." in wrong.text
    response = sign_in(client, "admin", app.state.initial_admin_password, follow=False)
    assert response.status_code == 303 and response.headers["location"] == "/catalog"
    cookie = response.headers["set-cookie"]
    assert "tempering_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Max-Age=43200" in cookie
    page = client.get("/catalog")
    assert page.status_code == 200 and "Model catalog" in page.text and 'class="page-catalog"' in page.text
    out = client.post("/signout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/catalog", follow_redirects=False).status_code == 303


def test_a_forged_or_ended_session_is_refused(client, app):
    admin(client, app)
    forged = client.cookies["tempering_session"][:-3] + ("AAA" if not client.cookies["tempering_session"]
                                                          .endswith("AAA") else "BBB")
    client.cookies.clear()
    client.cookies.set("tempering_session", forged)
    assert client.get("/catalog", follow_redirects=False).status_code == 303
    admin(client, app)
    from tempering.services.accounts import reset_password, user_by_name

    with app.state.db.session() as s:
        reset_password(s, user_by_name(s, "admin"), "a-brand-new-password")
    assert client.get("/catalog", follow_redirects=False).status_code == 303  # sessions signed before end


def test_sign_in_lockout_is_shown(client, app):
    for _ in range(5):
        assert sign_in(client, "admin", "wrong-password").status_code == 401
    locked = sign_in(client, "admin", app.state.initial_admin_password)
    assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text


def test_form_posts_need_the_csrf_token(client, app):
    token = admin(client, app)
    refused = client.post("/data", files={"file": ("train.jsonl", TRAIN)}, data={"purpose": "fine-tune"})
    assert refused.status_code == 403 and "did not come from this site" in refused.text
    wrong = client.post("/data", files={"file": ("train.jsonl", TRAIN)}, data={"csrf_token": "x" * 32})
    assert wrong.status_code == 403
    by_field = client.post("/data", files={"file": ("train.jsonl", TRAIN)}, data={"csrf_token": token})
    assert by_field.status_code == 200 and "ready for fine-tuning" in by_field.text
    by_header = client.post("/data", files={"file": ("train.jsonl", TRAIN)}, headers={"X-CSRF-Token": token})
    assert by_header.status_code == 200


def test_upload_with_errors_lists_every_problem_with_its_line(client, app):
    token = admin(client, app)
    posted = client.post("/data", files={"file": ("bad.jsonl", BAD)}, data={"csrf_token": token},
                         follow_redirects=False)
    assert posted.status_code == 303  # then the file's page: a reload uploads nothing again
    response = client.get(posted.headers["location"])
    assert "not valid training data" in response.text
    rows = re.findall(r"<tr><td>(\d+)</td><td>", response.text)
    assert set(rows) == {"21", "22"}, rows  # the answerless example and the line that is not JSON
    # the page's own uploader is told where the file's page is (it opens it once), rather than redirected there
    scripted = client.post("/data", files={"file": ("bad.jsonl", BAD)}, data={"csrf_token": token},
                           headers={"X-Tempering-Upload": "1"}, follow_redirects=False)
    assert scripted.status_code == 204 and re.fullmatch(r"/data/[\w-]+\?uploaded=1",
                                                        scripted.headers["x-tempering-location"])


def test_catalog_search_filters_and_answers_htmx_with_the_fragment(client, app):
    admin(client, app)
    everything = client.get("/catalog").text
    assert "SmolLM2" in everything and "Phi-3" in everything
    phi = client.get("/catalog", params={"q": "phi-3"})
    assert "Phi-3" in phi.text and "SmolLM2" not in phi.text
    fragment = client.get("/catalog", params={"q": "phi-3"}, headers={"HX-Request": "true", "HX-Target": "cards"})
    assert fragment.text.lstrip().startswith('<div id="cards"') and "<html" not in fragment.text
    assert "hf download microsoft/Phi-3" in fragment.text  # the command to get weights that are not here


def test_roles_see_only_what_they_may_do(client, app):
    add_user(app, "rita", "reader")
    add_user(app, "dev", "ai_developer")
    sign_in(client, "rita", "correct-horse-battery")
    catalog = client.get("/catalog").text
    assert ">Fine-tune<" not in catalog
    assert client.get("/fine-tune", params={"model": "phi-3-mini-4k-instruct"}).status_code == 403
    data = client.get("/data").text
    assert "Upload" not in data
    members = client.get("/members").text
    assert "Add member" not in members and "Create key" in members
    refused = client.post("/data", files={"file": ("t.jsonl", TRAIN)}, data={"csrf_token": csrf_of(data)})
    assert refused.status_code == 403 and "needs AI Developer or higher" in refused.text
    client.cookies.clear()
    sign_in(client, "dev", "correct-horse-battery")
    assert ">Fine-tune<" in client.get("/catalog").text
    assert client.get("/fine-tune", params={"model": "phi-3-mini-4k-instruct"}).status_code == 200
    assert "Add member" not in client.get("/members").text


def test_owner_adds_a_member_and_a_key_is_shown_once(client, app):
    add_user(app, "newbie", "reader")
    token = admin(client, app)
    added = client.post("/members", data={"csrf_token": token, "username": "nobody", "role": "reader"})
    assert added.status_code == 404 and "No user named nobody" in added.text
    created = client.post("/keys", data={"csrf_token": token, "name": "laptop"})
    key = re.search(r'data-testid="new-key">(tk-[^<]+)<', created.text).group(1)
    assert key not in client.get("/members").text  # shown once
    assert TestClient(app).get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_owner_creates_and_deletes_a_service_account(client, app):
    """A service account's key is shown once, acts in the project with the account's role, and stops working
    when the account is deleted; only those who manage keys see the section."""
    token = admin(client, app)
    refused = client.post("/service-accounts", data={"csrf_token": token, "name": "ci", "role": "emperor"})
    assert refused.status_code == 400 and 'role="alert"' in refused.text
    created = client.post("/service-accounts", data={"csrf_token": token, "name": "ci", "role": "reader"})
    key = re.search(r'data-testid="new-account-key">(tk-[^<]+)<', created.text).group(1)
    assert "The key of ci" in created.text
    page = client.get("/members").text
    assert key not in page and re.search(r"<td>ci</td><td>Reader</td>", page)
    api = TestClient(app)
    bearer = {"Authorization": f"Bearer {key}"}
    assert api.get("/v1/models", headers=bearer).status_code == 200
    assert api.patch("/v1/contentsafety/text/blocklists/x", headers=bearer, json={}).status_code == 403  # reader
    account_id = re.search(r'action="/service-accounts/([^/]+)/delete"', page).group(1)
    deleted = client.post(f"/service-accounts/{account_id}/delete", data={"csrf_token": token})
    assert "Deleted the service account ci" in deleted.text and "No service accounts." in deleted.text
    assert api.get("/v1/models", headers=bearer).status_code == 401
    add_user(app, "dev", "ai_developer")
    with TestClient(app) as other:
        sign_in(other, "dev", "correct-horse-battery")
        assert "Service accounts" not in other.get("/members").text


def test_language_is_per_user(client, app):
    token = admin(client, app)
    client.post("/locale", data={"csrf_token": token, "locale": "id"})
    page = client.get("/catalog").text
    assert 'lang="id"' in page and "Katalog model" in page and "Model catalog" not in page
    client.post("/locale", data={"csrf_token": token, "locale": "en"})
    assert "Model catalog" in client.get("/catalog").text


def test_new_project_for_hub_admins_and_switch(client, app):
    token = admin(client, app)
    projects = client.get("/projects")
    hub = re.search(r'action="/hubs/([^/]+)/projects"', projects.text).group(1)
    created = client.post(f"/hubs/{hub}/projects", data={"csrf_token": token, "name": "phi-3 demo"},
                          follow_redirects=False)
    assert created.status_code == 303
    listed = client.get("/projects").text
    assert "phi-3 demo" in listed
    hub_made = client.post("/hubs", data={"csrf_token": token, "name": "research"})
    assert "Created the hub research" in hub_made.text and "New project in hub research" in hub_made.text
    add_user(app, "rita", "reader")
    client.cookies.clear()
    sign_in(client, "rita", "correct-horse-battery")
    page = client.get("/projects").text
    assert "New project" not in page and "New hub" not in page
    refused = client.post(f"/hubs/{hub}/projects", data={"csrf_token": csrf_of(page), "name": "mine"})
    assert refused.status_code == 403
    assert client.post("/hubs", data={"csrf_token": csrf_of(page), "name": "mine"}).status_code == 403


def test_every_route_has_a_permission_decision(app):
    from fastapi.routing import APIRoute

    from tempering.api.permissions import ROUTES

    for route in app.routes:
        if isinstance(route, APIRoute):
            for method in route.methods - {"HEAD"}:
                assert (method, route.path) in ROUTES, (method, route.path)


def test_wizard_creates_the_job_the_api_creates(client, app, tiny_model):
    key = app.state.initial_api_key
    headers = {"Authorization": f"Bearer {key}"}
    file_id = client.post("/v1/files", headers=headers, files={"file": ("t.jsonl", TRAIN)},
                          data={"purpose": "fine-tune"}).json()["id"]
    body = {"model": tiny_model, "training_file": file_id, "suffix": "same", "seed": 7, "validation_fraction": 0.2,
            "adapter": "dora", "optimizer": "sgd", "label_smoothing": 0.1, "early_stopping": 1,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size_multiplier": 2.0, "learning_rate_multiplier": 0.5}}}}
    api_job = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    assert api_job.status_code == 200, api_job.text

    token = admin(client, app)
    start = client.get("/fine-tune", params={"model": tiny_model})
    assert start.status_code == 200 and ">Next<" in start.text
    state = {"csrf_token": token, "model": tiny_model}
    steps = [("name", {"suffix": "same"}),
             ("data", {"task": "chat", "training_file": file_id}),
             ("validation", {"validation": "split", "validation_fraction": "0.2"}),
             ("hyperparameters", {"n_epochs": "2", "batch_size_multiplier": "2", "learning_rate_multiplier": "0.5",
                                  "seed": "7", "adapter": "dora", "optimizer": "sgd", "label_smoothing": "0.1",
                                  "early_stopping": "1"})]
    for step, values in steps:
        state.update(values)
        response = client.post("/fine-tune", data={**state, "step": step, "go": "next"})
        assert response.status_code == 200, response.text
    assert "Trained tokens" in response.text and ">Submit<" in response.text  # the review, with the estimate
    submitted = client.post("/fine-tune", data={**state, "step": "review", "go": "submit"}, follow_redirects=False)
    assert submitted.status_code == 303, submitted.text
    portal_job_id = submitted.headers["location"].rsplit("/", 1)[-1]

    from tempering.store.models import Job

    with app.state.db.session(write=False) as s:
        assert s.get(Job, portal_job_id).config == s.get(Job, api_job.json()["id"]).config
        assert s.get(Job, portal_job_id).config["adapter"] == "dora"
    page = client.get(f"/jobs/{portal_job_id}")
    assert page.status_code == 200 and 'id="loss-chart"' in page.text and ">Cancel<" in page.text


def test_wizard_shows_every_problem_beside_its_field(client, app, tiny_model):
    token = admin(client, app)
    key = app.state.initial_api_key
    file_id = client.post("/v1/files", headers={"Authorization": f"Bearer {key}"},
                          files={"file": ("t.jsonl", TRAIN)}, data={"purpose": "fine-tune"}).json()["id"]
    state = {"csrf_token": token, "model": tiny_model, "task": "chat", "training_file": file_id,
             "n_epochs": "99", "learning_rate_multiplier": "many"}
    response = client.post("/fine-tune", data={**state, "step": "hyperparameters", "go": "next"})
    assert response.status_code == 400
    assert re.search(r'id="n_epochs-error"[^>]*>[^<]*between 1 and 50', response.text)
    assert 'id="learning_rate_multiplier-error"' in response.text
    full = client.post("/fine-tune", data={**state, "n_epochs": "2", "learning_rate_multiplier": "auto",
                                           "adapter": "full", "lora_rank": "8", "label_smoothing": "0.9",
                                           "step": "hyperparameters", "go": "next"})
    assert full.status_code == 400 and "<details open>" in full.text  # the advanced options, opened
    assert re.search(r'id="lora_rank-error"[^>]*>[^<]*adapter full trains every weight', full.text)
    assert re.search(r'<select id="adapter"[^>]*>\s*<option value="lora" >', full.text)  # the choice is kept
    assert '<option value="full" selected>' in full.text
    assert re.search(r'id="label_smoothing-error"[^>]*>[^<]*less than or equal to 0.5', full.text)
    chat = client.post("/fine-tune", data={**state, "n_epochs": "2", "learning_rate_multiplier": "auto",
                                           "head_init": "labels", "step": "hyperparameters", "go": "next"})
    assert chat.status_code == 400  # a chat job has no classification head to start from the label names
    assert re.search(r'id="head_init-error"[^>]*>[^<]*a chat job has none', chat.text)


def test_static_files_are_the_pinned_ones_and_cached(client):
    import hashlib
    from pathlib import Path

    import tempering.web

    static = Path(tempering.web.__file__).parent / "static"
    recorded = dict(re.findall(r"\| `([^`]+)` \|[^\n]*\| `([0-9a-f]{64})` \|", (static / "VENDORED.md").read_text()))
    assert set(recorded) == {"htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css"}
    for name, digest in recorded.items():
        assert hashlib.sha256((static / name).read_bytes()).hexdigest() == digest, name
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and "max-age=86400" in response.headers["cache-control"]
    axe = Path(__file__).parent / "vendor"  # for the browser test only, never served
    digest = re.search(r"`([0-9a-f]{64})`", (axe / "README.md").read_text()).group(1)
    assert hashlib.sha256((axe / "axe.min.js").read_bytes()).hexdigest() == digest
    assert client.get("/static/axe.min.js").status_code == 404
    assert client.get("/static/VENDORED.md").status_code == 404
    assert client.get("/static/..%2Fsession.py").status_code == 404


def test_wizard_without_training_data_goes_back_to_that_step(client, app, tiny_model):
    token = admin(client, app)
    state = {"csrf_token": token, "model": tiny_model, "task": "chat", "training_file": ""}
    response = client.post("/fine-tune", data={**state, "step": "hyperparameters", "go": "next"})
    assert response.status_code == 400 and 'class="page-wizard step-data"' in response.text
    assert 'id="training_file-error"' in response.text


def test_playground_names_a_missing_deployment(client, app):
    token = admin(client, app)
    whole = client.post("/playground", data={"csrf_token": token, "deployment": "nope", "message": "hi"})
    assert whole.status_code == 400 and "nope" in whole.text and 'role="alert"' in whole.text
    assert 'value="hi"' in whole.text or ">hi</textarea>" in whole.text  # what was typed is kept
    streamed = client.post("/playground/stream", data={"csrf_token": token, "deployment": "nope", "message": "hi"})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.startswith("event: error\ndata: ") and "nope" in streamed.text
    refused = client.post("/playground/stream", data={"deployment": "nope", "message": "hi"})
    assert refused.status_code == 403


def test_portal_uploads_are_capped_by_the_upload_limit_not_the_json_one(tempering_home, monkeypatch):
    from tempering.api.app import create_app
    from tempering.settings import get_settings, reset_settings

    monkeypatch.setenv("TEMPERING_MAX_JSON_BYTES", "2048")
    monkeypatch.setenv("TEMPERING_MAX_UPLOAD_BYTES", str(len(TRAIN) + 100))
    reset_settings()
    app = create_app(get_settings(), workers=0)
    with TestClient(app) as client:
        token = admin(client, app)
        assert len(TRAIN) > 2048
        ok = client.post("/data", files={"file": ("t.jsonl", TRAIN)}, data={"csrf_token": token})
        assert ok.status_code == 200 and "ready for fine-tuning" in ok.text
        too_big = client.post("/data", files={"file": ("t.jsonl", TRAIN * 2)}, data={"csrf_token": token})
        assert too_big.status_code in (400, 413) and "limit" in too_big.text


def test_sign_in_from_another_site_is_refused(client, app):
    response = client.post("/signin", data={"username": "admin", "password": app.state.initial_admin_password},
                           headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert response.status_code == 403 and "tempering_session" not in response.headers.get("set-cookie", "")


def test_job_page_streams_events_and_ends(client, app, tiny_model):
    key = app.state.initial_api_key
    headers = {"Authorization": f"Bearer {key}"}
    file_id = client.post("/v1/files", headers=headers, files={"file": ("t.jsonl", TRAIN)},
                          data={"purpose": "fine-tune"}).json()["id"]
    job_id = client.post("/v1/fine_tuning/jobs", headers=headers,
                         json={"model": tiny_model, "training_file": file_id}).json()["id"]
    from tempering.store.models import JobEvent

    with app.state.db.session() as s:
        s.add(JobEvent(job_id=job_id, level="info", type="metrics", message="Step 1/2: training loss=2.5",
                       data={"step": 1, "train_loss": 2.5}))
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=headers)
    admin(client, app)
    page = client.get(f"/jobs/{job_id}").text
    assert '"train_loss": 2.5' in page.replace("&#34;", '"')  # the chart's points as of the page load
    with client.stream("GET", f"/jobs/{job_id}/live") as live:
        assert live.headers["content-type"].startswith("text/event-stream")
        body = "".join(live.iter_text())
    frames = [f for f in body.replace("\r\n", "\n").split("\n\n") if f.strip() and not f.startswith(":")]
    kinds = [re.search(r"event: (\w+)", f).group(1) for f in frames]
    assert kinds[-2:] == ["status", "end"] and kinds.count("event") == 3  # created, the step, cancel
    assert '"point": {"step": 1, "train_loss": 2.5, "valid_loss": null}' in body
    assert '"status": "cancelled"' in body
    with client.stream("GET", f"/jobs/{job_id}/live", headers={"Last-Event-ID": "999999"}) as live:
        assert "event: event" not in "".join(live.iter_text())  # nothing after the last one seen
    other = TestClient(app)
    assert other.get(f"/jobs/{job_id}/live", follow_redirects=False).status_code == 303


def test_job_actions_follow_its_state(client, app, tiny_model):
    key = app.state.initial_api_key
    headers = {"Authorization": f"Bearer {key}"}
    file_id = client.post("/v1/files", headers=headers, files={"file": ("t.jsonl", TRAIN)},
                          data={"purpose": "fine-tune"}).json()["id"]
    job_id = client.post("/v1/fine_tuning/jobs", headers=headers,
                         json={"model": tiny_model, "training_file": file_id}).json()["id"]
    token = admin(client, app)
    page = client.get(f"/jobs/{job_id}").text
    assert ">Pause<" in page and ">Cancel<" in page and ">Resume<" not in page
    client.post(f"/jobs/{job_id}/pause", data={"csrf_token": token})
    page = client.get(f"/jobs/{job_id}").text  # no worker holds it: paused at once
    assert ">Resume<" in page and ">Pause<" not in page
    client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})
    page = client.get(f"/jobs/{job_id}").text
    assert "cancelled" in page and ">Cancel<" not in page
    refused = client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})
    assert refused.status_code == 409 and "already cancelled" in refused.text


def test_deploy_filter_toggle_and_delete(client, app, tiny_model):
    token = admin(client, app)
    refused = client.post("/models/deploy", data={"csrf_token": token, "model": tiny_model, "name": "base",
                                                  "quantization": "int2"})
    assert refused.status_code == 400 and "quantization must be one of none, int8, int4" in refused.text
    deployed = client.post("/models/deploy", data={"csrf_token": token, "model": tiny_model, "name": "base",
                                                   "quantization": "int8"}, follow_redirects=False)
    assert deployed.status_code == 303, deployed.text
    page = client.get(deployed.headers["location"]).text
    assert "Deployed: deploy-" in page and "Turn the filter on" in page  # the checkbox was not sent: off
    deployment_id = re.search(r'action="/deployments/([^/]+)/content-filter"', page).group(1)
    page = client.post(f"/deployments/{deployment_id}/content-filter",
                       data={"csrf_token": token, "content_filter": "on"}).text
    assert "Changed the content filter of base" in page and "Turn the filter off" in page
    add_user(app, "rita", "reader")
    reader = TestClient(app)
    sign_in(reader, "rita", "correct-horse-battery")
    seen = reader.get("/deployments").text
    assert "base" in seen and ">Playground<" in seen and ">Delete<" not in seen and "Turn the filter" not in seen
    detail = reader.get(f"/deployments/{deployment_id}")
    assert detail.status_code == 200 and "Pricing and terms" in detail.text and "Request log" in detail.text
    assert 'base_url="http://testserver/v1"' in detail.text and "Base model licence" in detail.text
    assert "<dt>Weights</dt><dd>int8 · not loaded yet</dd>" in detail.text  # engines load on first request
    assert 'name="prompt.hate" aria-label="hate: Prompts" disabled' in detail.text  # shown, not editable
    assert "Tokens of the last requests" not in detail.text  # no requests yet: no chart
    import time

    from tempering.store.models import DeploymentRequest

    with app.state.db.session() as s:
        for i, (prompt, completion) in enumerate(((10, 40), (30, 20), (20, 0))):
            s.add(DeploymentRequest(deployment_id=deployment_id, created_at=time.time() + i, endpoint="chat.completions",
                                    status=200, latency_ms=5.0 + i, prompt_tokens=prompt, completion_tokens=completion))
    charted = reader.get(f"/deployments/{deployment_id}").text
    assert "Tokens of the last requests (up to 40)" in charted
    lines = re.findall(r'<polyline[^>]*points="([^"]+)"', charted)
    assert lines[1:] == ["0.0,61.0 240.0,23.0 480.0,42.0", "0.0,4.0 240.0,42.0 480.0,80.0"]  # one scale: 40 tokens
    assert "Save policy" not in detail.text
    assert reader.post(f"/deployments/{deployment_id}/content-filter-policy",
                       data={"csrf_token": csrf_of(detail.text)}).status_code == 403

    from tempering.safety import blocklist_store
    from tempering.store.models import Deployment

    def stored_policy():
        with app.state.db.session(write=False) as s:
            return s.get(Deployment, deployment_id).content_filter_policy

    with app.state.db.session() as s:
        blocklist_store.upsert(s, s.get(Deployment, deployment_id).project_id, "brands", "")
    page = client.get(f"/deployments/{deployment_id}").text
    assert "runs under the server&#39;s default policy" in page and 'value="brands"' in page
    policy = {"csrf_token": token, "prompt.hate": "low", "prompt.jailbreak": "medium", "prompt.violence": "",
              "completion.hate": "high", "completion.profanity": "off", "blocklist": "brands",
              "fail_closed": "on", "stream_window": "200"}
    bad = client.post(f"/deployments/{deployment_id}/content-filter-policy",
                      data={**policy, "prompt.sexual": "extreme", "stream_window": "3"})
    assert bad.status_code == 400 and stored_policy() is None  # nothing stored
    assert re.search(r'role="alert">[^<]*prompt\.sexual[^<]*stream_window', bad.text)
    assert 'value="3"' in bad.text  # what was sent stays on the page for a correction
    saved = client.post(f"/deployments/{deployment_id}/content-filter-policy", data=policy)
    assert saved.status_code == 200 and "Saved the content filter policy" in saved.text
    assert stored_policy() == {"enabled": True, "prompt": {"hate": "low", "jailbreak": "medium"},
                               "completion": {"hate": "high", "profanity": "off"}, "blocklists": ["brands"],
                               "fail_closed": True, "stream_window": 200}

    def chosen(html, field):
        select = re.search(rf'name="{re.escape(field)}".*?</select>', html, re.DOTALL).group(0)
        return re.findall(r'<option value="([^"]*)" selected>', select)

    assert [chosen(saved.text, f) for f in ("prompt.hate", "prompt.violence", "completion.hate", "prompt.jailbreak",
                                            "completion.profanity")] == [["low"], [""], ["high"], ["medium"], ["off"]]
    unknown = client.post(f"/deployments/{deployment_id}/content-filter-policy",
                          data={**policy, "blocklist": "nope", "prompt.made_up": "medium"})
    assert unknown.status_code == 400 and "no blocklist named &#39;nope&#39;" in unknown.text
    assert "no classifier provides the category prompt.made_up" in unknown.text
    default = client.post(f"/deployments/{deployment_id}/content-filter-policy",
                          data={"csrf_token": token, "default": "1"})
    assert default.status_code == 200 and stored_policy() is None
    page = client.post(f"/deployments/{deployment_id}/delete", data={"csrf_token": token}).text
    assert "Deleted the deployment base" in page


@pytest.mark.parametrize("role", ["reader", "ai_developer", "owner"])
def test_every_page_answers_each_role_as_the_matrix_says(app, role):
    """Every page of web.PAGES with a project action: allowed → not 403; not allowed → 403 (and a GET page's
    links and buttons for it are not shown, checked above for the main pages)."""
    from tempering.services.access import ACTIONS, can
    from tempering.web import PAGES

    add_user(app, "someone", role)
    with TestClient(app) as client:
        token = csrf_of(sign_in(client, "someone", "correct-horse-battery").text)
        for (method, path), action in sorted(PAGES.items()):
            if action not in ACTIONS:
                continue
            url = re.sub(r"\{[^}]+\}", "nope", path)
            if method == "GET":
                response = client.get(url, follow_redirects=False)
            else:
                response = client.post(url, data={"csrf_token": token}, follow_redirects=False)
            if can(role, action):
                assert response.status_code != 403, (method, path, response.text[:300])
            else:
                assert response.status_code == 403, (method, path, response.status_code)
                assert "does not allow this" in response.text


def test_file_page_reports_and_splits_and_converts(client, app):
    token = admin(client, app)
    rows = [{"messages": [{"role": "user", "content": f"Is {i} even?"},
                          {"role": "assistant", "content": ["no", "yes"][i % 2 == 0]}]} for i in range(30)]
    data = "".join(json.dumps(r) + "\n" for r in rows + rows[:2]).encode()
    client.post("/data", files={"file": ("even.jsonl", data)}, data={"csrf_token": token})
    file_id = re.search(r'href="/data/(file-[^"]+)"', client.get("/data").text).group(1)
    page = client.get(f"/data/{file_id}")
    assert page.status_code == 200 and "Quality report" in page.text and "Label balance" in page.text
    assert re.search(r"Exact duplicates</dt><dd>2<", page.text)
    split = client.post(f"/data/{file_id}/split", data={"csrf_token": token, "validation_fraction": "0.2"})
    assert "Split into even.train.jsonl and even.validation.jsonl" in split.text
    converted = client.post(f"/data/{file_id}/convert", data={"csrf_token": token, "to": "classification"})
    assert "Converted into even.classification.jsonl" in converted.text
    bad = client.post(f"/data/{file_id}/split", data={"csrf_token": token, "validation_fraction": "half"})
    assert bad.status_code == 400 and "must be numbers" in bad.text
    assert client.get("/data/file-nope").status_code == 404


def test_file_page_counts_tokens_and_checks_leakage_on_request(client, app, tiny_model):
    """With a catalog model chosen, the report counts tokens through its template (a histogram of tokens per
    example); with a validation file chosen, the leakage between the two files is a finding."""
    token = admin(client, app)
    client.post("/data", files={"file": ("train.jsonl", TRAIN)}, data={"csrf_token": token})
    valid = TRAIN.splitlines(keepends=True)[:3] + [json.dumps(chat_example(f"Is {i} odd?", "yes")).encode() + b"\n"
                                                   for i in range(8)]
    client.post("/data", files={"file": ("valid.jsonl", b"".join(valid))}, data={"csrf_token": token})
    listing = client.get("/data").text
    train_id = re.search(r'<td>train.jsonl</td><td class="mono">(file-[^<]+)<', listing).group(1)
    valid_id = re.search(r'<td>valid.jsonl</td><td class="mono">(file-[^<]+)<', listing).group(1)
    plain = client.get(f"/data/{train_id}").text
    assert "Tokens per example" not in plain and f'<option value="{valid_id}"' in plain
    page = client.get(f"/data/{train_id}", params={"model": tiny_model, "validation_file": valid_id})
    assert page.status_code == 200
    assert f"Tokens per example ({tiny_model})" in page.text and 'aria-label="Histogram of tokens per example"' in page.text
    bars = re.findall(r"<tr><td>(\d+)(?:–(\d+))?</td><td>(\d+)</td><td><span class=\"bar\"", page.text)
    assert bars and sum(int(c) for _, _, c in bars) == 20  # each training example counted once
    assert all(not high or int(low) < int(high) for low, high, _ in bars)  # "10–18": first and last count
    assert "3 validation example(s) repeat training examples exactly" in page.text
    assert f'<option value="{valid_id}" selected>' in page.text
    unknown = client.get(f"/data/{train_id}", params={"model": "no-such-model"}).text
    assert re.search(r'role="alert">[^<]*no-such-model', unknown)
    assert "Quality report" in unknown and "Tokens per example" not in unknown  # the report stays, without tokens


def test_usage_page_shows_the_projects_ledger(client, app):
    admin(client, app)
    page = client.get("/usage")
    assert page.status_code == 200 and "Usage &amp; cost" in page.text and "0.0000 USD in all" in page.text


def test_owners_change_and_remove_members_and_keep_an_owner(client, app):
    add_user(app, "newbie", "reader")
    token = admin(client, app)
    page = client.get("/members").text
    found = re.findall(r'action="/members/([^/"]+)" class="inline">\s*<input[^>]*>\s*<label for="role-\d+">Role of '
                       r'([^<]+)<', page)
    ids = {name: uid for uid, name in found}
    changed = client.post(f"/members/{ids['newbie']}", data={"csrf_token": token, "role": "ai_developer"})
    assert "Changed the role of newbie" in changed.text
    last_owner = client.post(f"/members/{ids['admin']}", data={"csrf_token": token, "role": "reader"})
    assert last_owner.status_code == 400 and "at least one Owner" in last_owner.text
    removed = client.post(f"/members/{ids['newbie']}/remove", data={"csrf_token": token})
    assert "Removed the member" in removed.text and "<td>newbie</td>" not in removed.text


def test_a_refusal_is_in_the_users_language(client, app):
    add_user(app, "rita", "reader")
    token = csrf_of(sign_in(client, "rita", "correct-horse-battery").text)
    client.post("/locale", data={"csrf_token": token, "locale": "id"})
    refused = client.get("/fine-tune", params={"model": "x"})
    assert refused.status_code == 403
    assert "Peran Anda di proyek ini (Pembaca) tidak mengizinkan ini; diperlukan Pengembang AI" in refused.text


def test_every_portal_string_has_an_indonesian_translation():
    from pathlib import Path

    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    import tempering.web

    web = Path(tempering.web.__file__).parent
    methods = [("**.py", "python"), ("templates/**.html", "jinja2")]
    ids = {message if isinstance(message, str) else message[0]
           for _, _, message, _, _ in extract_from_dir(str(web), methods)}
    with (web / "locale" / "id" / "LC_MESSAGES" / "messages.po").open("rb") as po:
        catalog = read_po(po)
    missing = sorted(m for m in ids if not (catalog.get(m) and catalog.get(m).string))
    assert not missing, f"untranslated (pybabel extract, then pybabel update; docs/portal.md): {missing}"
