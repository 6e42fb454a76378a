"""The portal's administration pages through FastAPI's TestClient: a hub's settings (content-safety backend,
default policy, quotas, prices, secrets), blocklists, the server administrator's users and custom content
categories, and a user's own account (changing their password). The rest of the portal: tests/test_portal.py."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from portal_fixtures import add_user, admin, app_fixture, client_fixture, csrf_of, sign_in  # noqa: F401  (fixtures)


def test_hub_settings_page_sets_what_the_api_sets(tempering_home, monkeypatch):
    """A hub admin's settings page: the content-safety backend, default quotas, prices and secrets go through
    services.projects as the API's hub update does (same checks, same stored shape); a secret's value is never
    shown; a Reader is refused."""
    from tempering.settings import reset_settings
    from tempering.store.models import Hub
    from tempering.store.quotas import effective_quotas

    endpoint = "http://127.0.0.1:9/v1"
    monkeypatch.setenv("TEMPERING_UPSTREAM_ALLOWED_URLS", json.dumps([endpoint]))
    reset_settings()
    from tempering.api.app import create_app
    from tempering.settings import get_settings

    app = create_app(get_settings(), workers=0)
    with TestClient(app) as client:
        token = admin(client, app)
        hub = re.search(r'href="/hubs/([^/"]+)"', client.get("/projects").text).group(1)
        page = client.get(f"/hubs/{hub}")
        assert page.status_code == 200 and "Content safety" in page.text and endpoint in page.text
        assert 'placeholder="0.0002"' in page.text  # the server's training price for the embedded model

        def post(path, **fields):
            return client.post(f"/hubs/{hub}/{path}", data={"csrf_token": token, **fields})

        def stored():
            with app.state.db.session(write=False) as s:
                return dict(s.get(Hub, hub).settings or {})

        saved = post("secrets", name="guard-key", value="sk-never-shown")
        assert saved.status_code == 200 and "Saved the secret guard-key" in saved.text
        assert "sk-never-shown" not in saved.text and "guard-key" in saved.text
        assert post("secrets", name="no/slash", value="x").status_code == 400

        key_name = "guard-key"
        elsewhere = post("content-safety", backend="openai", endpoint="http://10.0.0.1/v1", api_key_secret=key_name)
        assert elsewhere.status_code == 403 and "content_safety" not in stored()
        assert re.search(r'role="alert">[^<]*not one of the remote servers', elsewhere.text)
        assert 'value="http://10.0.0.1/v1"' in elsewhere.text  # what was typed is kept for a correction
        ok = post("content-safety", backend="openai", endpoint=endpoint, api_key_secret=key_name, model="")
        assert ok.status_code == 200, ok.text
        assert stored()["content_safety"] == {"backend": "openai", "endpoint": endpoint, "api_key_secret": "guard-key"}
        guard = post("content-safety", backend="guard", endpoint=endpoint, api_key_secret=key_name,
                     model="meta-llama/Llama-Guard-3-1B")
        assert guard.status_code == 200 and '<option value="guard" selected' in guard.text
        assert stored()["content_safety"]["model"] == "meta-llama/Llama-Guard-3-1B"
        in_use = post("secrets/guard-key/delete")
        assert in_use.status_code == 409 and "holds the key of the hub" in in_use.text
        assert post("content-safety", backend="local", endpoint=endpoint).status_code == 200
        assert stored()["content_safety"] == {"backend": "local"}

        bad = post("quotas", **{"quota.concurrent_jobs": "-1", "quota.deployments": "two"})
        assert bad.status_code == 400
        assert re.search(r'role="alert">[^<]*concurrent_jobs[^<]*deployments', bad.text)
        assert "default_quotas" not in stored()  # nothing half-written
        assert post("quotas", **{"quota.concurrent_jobs": "3", "quota.stored_bytes": ""}).status_code == 200
        assert stored()["default_quotas"] == {"concurrent_jobs": 3}
        with app.state.db.session(write=False) as s:
            from tempering.store.models import Project

            project = s.query(Project).filter(Project.hub_id == hub).first()
            assert effective_quotas(s, project.id).concurrent_jobs == 3
        assert post("quotas").status_code == 200 and "default_quotas" not in stored()  # all empty: the server's

        refused = post("prices", **{"price.*.training_per_1k_tokens": "abc"})
        assert refused.status_code == 400 and "prices" not in stored()
        assert re.search(r'role="alert">[^<]*not a number', refused.text)
        prices = post("prices", **{"price.*.training_per_1k_tokens": "0.5",
                                   "price.phi-3.5-mini-instruct.hosting_per_hour": "1",
                                   "price.smollm2-135m-instruct.input_per_1k_tokens": ""})
        assert prices.status_code == 200
        assert stored()["prices"] == {"*": {"training_per_1k_tokens": 0.5},
                                      "phi-3.5-mini-instruct": {"hosting_per_hour": 1}}
        shown = client.get(f"/hubs/{hub}").text
        assert 'value="0.5"' in shown
        smollm2 = re.search(r'name="price.smollm2-135m-instruct.training_per_1k_tokens"[^>]*>', shown).group(0)
        assert 'placeholder="0.5"' in smollm2  # an empty field takes the hub's * price, not the server's
        star = re.search(r'name="price.\*.hosting_per_hour"[^>]*>', shown).group(0)
        assert 'placeholder="0.2"' in star  # the server's *
        renamed = post("name", name="   ")
        assert renamed.status_code == 400, renamed.text[:300]
        assert 'value="   "' in renamed.text.split('id="hub-name-input"')[1][:80]  # what was typed, kept

        page = client.get(f"/hubs/{hub}").text
        assert "The hub sets none" in page and "Use the server&#39;s policy" not in page
        bad_policy = post("content-filter-policy", **{"prompt.hate": "extreme", "stream_window": "200"})
        assert bad_policy.status_code == 400 and "content_filter_policy" not in stored()
        assert re.search(r'role="alert">[^<]*prompt\.hate', bad_policy.text)
        policy = post("content-filter-policy", **{"prompt.hate": "low", "completion.violence": "high",
                                                  "blocklist": "brands", "fail_closed": "on", "stream_window": "200"})
        assert policy.status_code == 200 and "Saved the default content filter policy." in policy.text
        assert stored()["content_filter_policy"] == {"enabled": True, "prompt": {"hate": "low"},
                                                     "completion": {"violence": "high"}, "blocklists": [],
                                                     "fail_closed": True, "stream_window": 200}
        assert "Use the server&#39;s policy" in policy.text
        assert post("content-filter-policy", default="1").status_code == 200
        assert "content_filter_policy" not in stored()
        assert "Renamed the hub" in post("name", name="research").text
        deleted = post("secrets/guard-key/delete")
        assert deleted.status_code == 200 and "guard-key" not in deleted.text.split('id="secrets"')[1]
        assert post("secrets/guard-key/delete").status_code == 404
        assert client.get("/hubs/hub-nope").status_code == 404

    add_user(app, "rita", "reader")
    with TestClient(app) as client:
        sign_in(client, "rita", "correct-horse-battery")
        assert client.get(f"/hubs/{hub}").status_code == 403
        assert 'href="/hubs/' not in client.get("/projects").text


def test_blocklists_pages(client, app):
    """Create a blocklist, describe it, add a term and a regular expression (a bad one refused with the
    service's words, what was typed kept), remove an item, delete the list; a Reader sees it and no forms."""
    token = admin(client, app)
    assert "The project has no blocklists." in client.get("/blocklists").text
    bad = client.post("/blocklists", data={"csrf_token": token, "name": "..", "description": "dots"})
    assert bad.status_code == 400 and 'value="dots"' in bad.text and "not only dots" in bad.text
    created = client.post("/blocklists", data={"csrf_token": token, "name": "brands", "description": "rivals"},
                          follow_redirects=False)
    assert created.status_code == 303 and created.headers["location"] == "/blocklists/brands"
    again = client.post("/blocklists", data={"csrf_token": token, "name": "brands", "description": ""})
    assert again.status_code == 409 and "already has a blocklist named" in again.text
    page = client.post("/blocklists/brands/items", data={"csrf_token": token, "text": "Zorblax"}).text
    assert "Added Zorblax" in page and ">term<" in page
    refused = client.post("/blocklists/brands/items", data={"csrf_token": token, "text": "(unclosed",
                                                            "is_regex": "on", "description": "oops"})
    assert refused.status_code == 400 and "not a valid regular expression" in refused.text
    assert 'value="(unclosed"' in refused.text and 'value="oops"' in refused.text
    page = client.post("/blocklists/brands/items", data={"csrf_token": token, "text": r"acme\s*corp",
                                                         "is_regex": "on"}).text
    assert ">regular expression<" in page
    page = client.post("/blocklists/brands", data={"csrf_token": token, "description": "our rivals"}).text
    assert "Saved the description." in page and 'value="our rivals"' in page
    listed = client.get("/blocklists").text
    assert re.search(r'href="/blocklists/brands">brands</a></td><td>our rivals</td><td>2<', listed)

    from tempering.safety import check_prompt
    from tempering.safety.blocklist_store import load
    from tempering.safety.policy import SafetyPolicy
    from tempering.store.models import Project

    with app.state.db.session(write=False) as s:
        lists = load(s, s.query(Project).first().id, ["brands"])
    only_lists = SafetyPolicy(prompt={}, completion={}, blocklists=["brands"])
    assert check_prompt("Is ACME  Corp better?", only_lists, lists).filtered  # what the filter applies

    item_id = re.search(r'action="/blocklists/brands/items/([^/]+)/remove"', page).group(1)
    page = client.post(f"/blocklists/brands/items/{item_id}/remove", data={"csrf_token": token}).text
    assert "Removed the item." in page and "Zorblax" not in page

    add_user(app, "rita", "reader")
    with TestClient(app) as reader:
        sign_in(reader, "rita", "correct-horse-battery")
        seen = reader.get("/blocklists/brands").text
        assert "acme" in seen and "Add an item" not in seen and "Delete blocklist" not in seen

    gone = client.post("/blocklists/brands/delete", data={"csrf_token": token})
    assert gone.status_code == 200 and "Deleted the blocklist brands." in gone.text
    assert client.get("/blocklists/brands").status_code == 404


def test_server_administrator_manages_users(client, app):
    """Create a user (password shown once, and it signs in), reset a password, disable and enable, make an
    administrator; no one locks themselves out; other users are refused the page and see no link to it."""
    token = admin(client, app)
    assert 'href="/users"' in client.get("/projects").text
    created = client.post("/users", data={"csrf_token": token, "username": "nina", "name": "Nina"})
    password = re.search(r'data-testid="new-password">([^<]+)<', created.text).group(1)
    again = client.post("/users", data={"csrf_token": token, "username": "nina", "name": "Other"})
    assert again.status_code == 409 and 'value="Other"' in again.text
    with TestClient(app) as nina:
        assert sign_in(nina, "nina", password).status_code == 200
    nina_id = re.search(r'action="/users/([^/"]+)/reset-password"', created.text.split("<td>nina</td>")[1]).group(1)
    reset = client.post(f"/users/{nina_id}/reset-password", data={"csrf_token": token})
    fresh = re.search(r'data-testid="new-password">([^<]+)<', reset.text).group(1)
    with TestClient(app) as nina:
        assert sign_in(nina, "nina", password).status_code == 401 and sign_in(nina, "nina", fresh).status_code == 200
    disabled = client.post(f"/users/{nina_id}", data={"csrf_token": token, "change": "disable"})
    assert "Changed nina." in disabled.text and "disabled" in disabled.text.split("<td>nina</td>")[1][:120]
    with TestClient(app) as nina:
        assert sign_in(nina, "nina", fresh).status_code != 200
    assert client.post(f"/users/{nina_id}", data={"csrf_token": token, "change": "enable"}).status_code == 200
    from tempering.services.accounts import user_by_name

    with app.state.db.session(write=False) as s:
        own_id = user_by_name(s, "admin").id
    assert f'action="/users/{own_id}' not in created.text  # no buttons on one's own row
    lockout = client.post(f"/users/{own_id}", data={"csrf_token": token, "change": "disable"})
    assert lockout.status_code == 403 and "cannot disable yourself" in lockout.text
    own_reset = client.post(f"/users/{own_id}/reset-password", data={"csrf_token": token})
    assert own_reset.status_code == 403 and "your account page" in own_reset.text
    from tempering.errors import TemperingError
    from tempering.services.accounts import get_user, update_user

    with pytest.raises(TemperingError) as last, app.state.db.session() as s:  # the server's own tools, no caller
        update_user(s, get_user(s, own_id), None, is_admin=False)
    assert last.value.code == "last_administrator"
    with app.state.db.session(write=False) as s:
        assert get_user(s, own_id).is_admin  # nothing half-written
    assert client.post(f"/users/{nina_id}", data={"csrf_token": token, "change": "promote"}).status_code == 400
    add_user(app, "olga", "owner")
    with TestClient(app) as olga:
        sign_in(olga, "olga", "correct-horse-battery")
        assert olga.get("/users").status_code == 403 and 'href="/users"' not in olga.get("/projects").text
        assert olga.get("/categories").status_code == 403


def test_server_administrator_trains_and_deletes_a_custom_category(client, app):
    token = admin(client, app)
    rows = [{"text": f"Is Zorblax {w} than you?", "label": 1} for w in ("cheaper", "better", "faster") * 12]
    rows += [{"text": f"Can you help me with {t} please?", "label": 0} for t in ("my bill", "a refund", "login") * 12]
    client.post("/data", files={"file": ("cats.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())},
                data={"csrf_token": token})
    page = client.get("/categories").text
    assert ">hate</td>" in page and "cats.jsonl" in page
    file_id = re.search(r'<option value="(file-[^"]+)">cats.jsonl', page).group(1)
    bad = client.post("/categories", data={"csrf_token": token, "name": "Bad Name", "training_file": file_id})
    assert bad.status_code == 400 and 'value="Bad Name"' in bad.text
    trained = client.post("/categories", data={"csrf_token": token, "name": "rivals", "training_file": file_id})
    assert trained.status_code == 200 and "Trained the category rivals." in trained.text
    assert re.search(r">rivals</td><td>custom</td>", trained.text)
    gone = client.post("/categories/rivals/delete", data={"csrf_token": token})
    assert "Deleted the category rivals." in gone.text and ">rivals</td>" not in gone.text


def test_a_user_changes_their_own_password(app):
    """The current password is checked (under the sign-in throttle), the new one twice; afterwards this session
    goes on, the user's other sessions end, and only the new password signs in."""
    add_user(app, "pat", "reader")
    with TestClient(app) as mine, TestClient(app) as elsewhere:
        token = csrf_of(sign_in(mine, "pat", "correct-horse-battery").text)
        sign_in(elsewhere, "pat", "correct-horse-battery")
        assert 'href="/account">pat</a>' in mine.get("/catalog").text

        def change(current, new, repeat=None):
            return mine.post("/account/password", data={"csrf_token": token, "current_password": current,
                                                        "new_password": new, "repeat_password": repeat or new})

        wrong = change("not-my-password", "a-brand-new-secret")
        assert wrong.status_code == 403 and "current password is not correct" in wrong.text
        assert change("correct-horse-battery", "a-brand-new-secret", "another-secret-x").status_code == 400
        weak = change("correct-horse-battery", "short")
        assert weak.status_code == 400 and "at least 10 characters" in weak.text
        done = change("correct-horse-battery", "a-brand-new-secret")
        assert done.status_code == 200 and "Changed your password" in done.text
        assert mine.get("/catalog", follow_redirects=False).status_code == 200  # this session goes on
        assert elsewhere.get("/catalog", follow_redirects=False).status_code == 303  # the others ended
    with TestClient(app) as fresh:
        assert sign_in(fresh, "pat", "correct-horse-battery").status_code == 401
        assert sign_in(fresh, "pat", "a-brand-new-secret").status_code == 200
