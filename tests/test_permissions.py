"""The permission walk: every route the app serves, every kind of caller, the outcome the matrix says.

Callers: the admin (server administrator, hub admin, Owner), an Owner, an AI Developer and a Reader of the
project (users with keys), a Reader service account, no key, a revoked key, an expired key, and another
project's Owner. Path ids are real objects of the first project, so "another project's key" meets real ids and
must get 404 on every object kind. Requests a caller is allowed to make are sent only when they read (GET):
allowed writes are the functional tests' business; here they would change the objects the walk reads.
"""

from __future__ import annotations

import re

import pytest

from tempering.services import access

TINY_FT = "ft:tiny-llama:perm:abc123"


def walk(routes, prefix=""):
    """(method, path) of every route, through FastAPI's included routers."""
    for route in routes:
        if hasattr(route, "original_router"):
            yield from walk(route.original_router.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "path"):
            for method in sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"}):
                yield method, prefix + route.path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An app with one project full of objects, its people and keys, and a second project."""
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.services import accounts, projects
    from tempering.services.access import create_key
    from tempering.settings import Settings
    from tempering.store.models import (
        ContentBlocklist,
        Deployment,
        Evaluation,
        File,
        Hub,
        Job,
        Project,
        ProjectMember,
        Sweep,
        Webhook,
        now,
    )

    app = create_app(Settings(home=tmp_path_factory.mktemp("perm-home")), workers=0)
    keys = {"admin": app.state.initial_api_key}
    ids = {}
    with app.state.db.session() as session:
        project = session.query(Project).one()
        hub = session.get(Hub, project.hub_id)
        ids.update(project_id=project.id, hub_id=hub.id)
        for name, role in (("owner", "owner"), ("ai_developer", "ai_developer"), ("reader", "reader")):
            user, _ = accounts.create_user(session, f"{name}-user", "a long password")
            session.add(ProjectMember(project_id=project.id, user_id=user.id, role=role))
            _, keys[name] = create_key(session, project.id, name, role, user_id=user.id)
            ids["user_id"] = user.id  # a member (the reader, last)
        keys["service_reader"] = projects.project_key(session, project.id, "robot", "reader")
        _, keys["revoked"] = create_key(session, project.id, "old", "owner", user_id=ids["user_id"])
        _, keys["expired"] = create_key(session, project.id, "gone", "owner", user_id=ids["user_id"])
        from tempering.store.models import ApiKey

        for row in session.query(ApiKey).filter(ApiKey.name.in_(["old", "gone"])):
            row.revoked = row.name == "old"
            row.expires_at = now() - 10 if row.name == "gone" else None
        ids["key_id"] = session.query(ApiKey).filter(ApiKey.name == "owner").one().id
        ids["service_account_id"] = session.query(ApiKey).filter(ApiKey.name == "robot").one().service_account_id
        other = projects.create_project(session, hub, "other")
        otto, _ = accounts.create_user(session, "otto", "a long password")
        session.add(ProjectMember(project_id=other.id, user_id=otto.id, role="owner"))
        _, keys["other_project"] = create_key(session, other.id, "otto", "owner", user_id=otto.id)

        file = File(project_id=project.id, filename="t.jsonl", purpose="fine-tune", bytes=2, sha256="0" * 64,
                    status="processed")
        session.add(file)
        session.flush()
        app.state.store.file_path(file.id).write_bytes(b"{}")
        job = Job(project_id=project.id, model="tiny-llama", training_file=file.id, seed=1, config={},
                  status="succeeded", fine_tuned_model=TINY_FT)
        evaluation = Evaluation(project_id=project.id, model="tiny-llama", data_file=file.id, status="queued")
        deployment = Deployment(project_id=project.id, name="perm", model="tiny-llama", base_model="tiny-llama")
        blocklist = ContentBlocklist(project_id=project.id, name="words")
        webhook = Webhook(project_id=project.id, url="https://93.184.215.14/hook", events=["deployment.created"],
                          secret_ciphertext=app.state.cipher.encrypt("whsec_AAAA"))
        sweep = Sweep(project_id=project.id, model="tiny-llama", training_file=file.id, seed=1, config={},
                      search_space=[], objective={}, pruning={}, n_trials=1, status="succeeded")
        session.add_all([job, evaluation, deployment, blocklist, webhook, sweep])
        session.flush()
        ids.update(file_id=file.id, job_id=job.id, sweep_id=sweep.id, evaluation_id=evaluation.id, deployment_id=deployment.id,
                   name="words", model_id=TINY_FT, rate_limit_id=f"rl-{deployment.id}", webhook_id=webhook.id,
                   item_id="00000000-0000-0000-0000-000000000000")
    with TestClient(app) as client:
        yield app, client, keys, ids


def url_of(path: str, ids: dict) -> str:
    def fill(match):
        name = match.group(1).split(":")[0]
        return ids[name] if name != "name" or "secrets" not in path else "a-secret"

    return re.sub(r"\{([^}]+)\}", fill, path)


ROLE_OF = {"admin": "owner", "owner": "owner", "ai_developer": "ai_developer", "reader": "reader",
           "service_reader": "reader"}


def expected(caller: str, method: str, path: str, action: str) -> str:
    """'allowed', or the status a refusal must have."""
    from tempering.web import PAGES

    if action == access.PUBLIC:
        return "allowed"
    if (method, path) in PAGES:
        return "refused"  # a portal page acts for the session cookie's user, never a key's (tests/test_portal.py)
    if caller in ("none", "revoked", "expired"):
        return "401" if path.startswith("/v1") else "refused"
    if caller == "other_project":
        if "{name}" in path and "blocklists" in path:
            return "allowed"  # blocklist names are per project: the same name is another list of their own
        if action in (access.SIGNED_IN,) or path in ("/v1/organization/projects", "/v1/organization/hubs"):
            return "allowed" if method == "GET" else "403"
        if action in ("server.admin", "hub.admin"):
            return "403"  # their project is in the same hub: they know it, but do not run it
        if "{" in path:
            return "404"  # my objects are not theirs
        return "allowed"  # a list of their own project (empty)
    if action == "server.admin":
        return "allowed" if caller == "admin" else "403"
    if action == "hub.admin":
        if caller == "admin":
            return "allowed"
        return "403"  # a project of theirs is in the hub: they know it, but do not run it
    return "allowed" if access.can(ROLE_OF[caller], action) else "403"


CALLERS = ["admin", "owner", "ai_developer", "reader", "service_reader", "none", "revoked", "expired",
           "other_project"]


def test_every_route_has_a_permission_decision(world):
    from tempering.api.permissions import ROUTES

    app, *_ = world
    served = set(walk(app.routes))
    assert served - set(ROUTES) == set(), "routes without a permission decision"
    assert set(ROUTES) - served == set(), "decisions for routes that do not exist"
    assert all(a in access.ACTIONS or a in access.HUB_ACTIONS or a in (access.PUBLIC, access.SIGNED_IN)
               for a in ROUTES.values())


@pytest.mark.parametrize("caller", CALLERS)
def test_every_route_answers_each_caller_as_the_matrix_says(world, caller):
    from tempering.api.permissions import ROUTES

    app, client, keys, ids = world
    headers = {"Authorization": f"Bearer {keys[caller]}"} if caller in keys else {}
    failures = []
    for method, path in sorted(set(walk(app.routes))):
        want = expected(caller, method, path, ROUTES[(method, path)])
        if want == "allowed" and method != "GET":
            continue  # allowed writes: the functional tests
        if path == "/metrics" or path.startswith("/docs") or path == "/redoc":
            continue  # public pages with nothing of a project's; /metrics has its own token
        response = client.request(method, url_of(path, ids), headers=headers, json={} if method != "GET" else None,
                                  follow_redirects=False)
        got = response.status_code
        ok = (got not in (401, 403) and got < 500) if want == "allowed" else (
            got in (401, 302, 303, 307) if want == "refused" else got == int(want))
        if not ok:
            failures.append(f"{caller} {method} {path}: want {want}, got {got} {response.text[:160]}")
    assert not failures, "\n".join(failures)


def test_a_key_acts_with_the_lower_of_its_role_and_its_holders(world):
    """Demoting a user demotes their keys at once; removing them from the project stops their keys."""
    app, client, keys, ids = world
    from tempering.services import accounts
    from tempering.services.access import create_key
    from tempering.store.models import ProjectMember

    with app.state.db.session() as session:
        user, _ = accounts.create_user(session, "demoted", "a long password")
        session.add(ProjectMember(project_id=ids["project_id"], user_id=user.id, role="ai_developer"))
        _, key = create_key(session, ids["project_id"], "k", "ai_developer", user_id=user.id)
        user_id = user.id
    mine = {"Authorization": f"Bearer {key}"}
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    members = f"/v1/organization/projects/{ids['project_id']}/users/{user_id}"
    assert client.get("/v1/me", headers=mine).json()["role"] == "ai_developer"
    assert client.post(members, headers=admin, json={"role": "reader"}).json()["role"] == "reader"
    assert client.get("/v1/me", headers=mine).json()["role"] == "reader"
    assert client.post("/v1/files", headers=mine, files={"file": ("a.jsonl", b"{}")},
                       data={"purpose": "fine-tune"}).status_code == 403
    assert client.delete(members, headers=admin).status_code == 200
    assert client.get("/v1/files", headers=mine).status_code == 401


def test_keys_are_shown_once_listed_by_prefix_and_revoked_at_once(world):
    app, client, keys, ids = world
    base = f"/v1/organization/projects/{ids['project_id']}/api_keys"
    dev = {"Authorization": f"Bearer {keys['ai_developer']}"}
    created = client.post(base, headers=dev, json={"name": "laptop"}).json()
    assert created["value"].startswith("tk-") and created["role"] == "ai_developer"
    assert created["redacted_value"].startswith(created["value"][:10]) and created["value"] not in str(
        client.get(base, headers=dev).json())
    # an AI Developer sees only their own keys and cannot raise a key above their role
    listed = {k["id"] for k in client.get(base, headers=dev).json()["data"]}
    assert created["id"] in listed and ids["key_id"] not in listed
    assert client.post(base, headers=dev, json={"name": "x", "role": "owner"}).status_code == 403
    assert client.delete(f"{base}/{ids['key_id']}", headers=dev).status_code == 404
    new = {"Authorization": f"Bearer {created['value']}"}
    assert client.get("/v1/files", headers=new).status_code == 200
    assert client.get(f"{base}/{created['id']}", headers=dev).json()["last_used_at"] is not None
    assert client.delete(f"{base}/{created['id']}", headers=dev).status_code == 200
    assert client.get("/v1/files", headers=new).status_code == 401
    past = client.post(base, headers=dev, json={"name": "y", "expires_at": 1000})
    assert past.status_code == 400 and past.json()["error"]["param"] == "expires_at"


def test_a_project_keeps_an_owner_and_owners_manage_members(world):
    app, client, keys, ids = world
    base = f"/v1/organization/projects/{ids['project_id']}/users"
    owner = {"Authorization": f"Bearer {keys['owner']}"}
    assert client.post(base, headers={"Authorization": f"Bearer {keys['ai_developer']}"},
                       json={"user_id": ids["user_id"], "role": "owner"}).status_code == 403
    members = client.get(base, headers=owner).json()["data"]
    assert {m["role"] for m in members} >= {"owner", "ai_developer", "reader"}
    assert client.post(base, headers=owner, json={"user_id": ids["user_id"], "role": "reader"}).status_code == 409
    probe = "/v1/contentsafety/text/blocklists/audit-probe"  # an audited change of this project, whatever ran before
    assert client.patch(probe, headers=owner, json={}).status_code == 201
    assert client.delete(probe, headers=owner).status_code == 204
    audit = client.get(f"/v1/organization/projects/{ids['project_id']}/audit_logs", headers=owner).json()["data"]
    assert audit and all(e["project_id"] == ids["project_id"] for e in audit)


def test_sign_in_is_throttled_per_user_with_a_lockout(world):
    from tempering.errors import RateLimitedError, TemperingError
    from tempering.services import accounts

    app, *_ = world
    throttle = accounts.SignInThrottle()
    with app.state.db.session() as session:
        assert accounts.sign_in(session, throttle, "reader-user", "a long password").username == "reader-user"
        for _ in range(accounts.SIGN_IN_FAILURES):
            with pytest.raises(TemperingError) as wrong:
                accounts.sign_in(session, throttle, "reader-user", "wrong password", "10.0.0.1")
            assert wrong.value.code == "invalid_credentials"
        with pytest.raises(RateLimitedError) as locked:  # the right password too, while locked out
            accounts.sign_in(session, throttle, "reader-user", "a long password", "10.0.0.2")
        assert locked.value.retry_after > 0
        with pytest.raises(TemperingError) as unknown:  # an unknown user reads the same as a wrong password
            accounts.sign_in(session, throttle, "nobody", "whatever it is")
        assert unknown.value.code == "invalid_credentials"


def test_hub_secrets_are_write_only_and_encrypted_at_rest(world):
    from sqlalchemy import text

    from tempering.services.secrets import hub_secret

    app, client, keys, ids = world
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    base = f"/v1/organization/hubs/{ids['hub_id']}/secrets"
    assert client.put(f"{base}/safety-key", headers=admin, json={"value": "s3cret-one"}).status_code == 200
    assert client.put(f"{base}/safety-key", headers=admin, json={"value": "s3cret-two"}).status_code == 200  # rotate
    listed = client.get(base, headers=admin)
    assert [s["name"] for s in listed.json()["data"]] == ["safety-key"] and "s3cret" not in listed.text
    assert client.put(f"{base}/bad name", headers=admin, json={"value": "x"}).status_code in (400, 404)
    with app.state.db.session() as session:
        stored = session.execute(text("SELECT ciphertext FROM hub_secrets")).scalar_one()
        assert "s3cret" not in stored
        assert hub_secret(session, ids["hub_id"], "safety-key", app.state.cipher) == "s3cret-two"
    assert client.put(f"{base}/x", headers={"Authorization": f"Bearer {keys['owner']}"},
                      json={"value": "x"}).status_code == 403  # an Owner of a project is not the hub's admin
    elsewhere = client.post("/v1/organization/hubs", headers=admin, json={"name": "research"}).json()["id"]
    assert client.get(f"/v1/organization/hubs/{elsewhere}/secrets",
                      headers={"Authorization": f"Bearer {keys['owner']}"}).status_code == 404  # not theirs to know
    assert client.delete(f"{base}/safety-key", headers=admin).status_code == 200
    assert client.get(base, headers=admin).json()["data"] == []


def test_the_audit_log_names_the_actor_of_api_changes(world):
    app, client, keys, ids = world
    dev = {"Authorization": f"Bearer {keys['ai_developer']}"}
    deployment = client.post("/v1/deployments", headers=dev, json={"model": "nonexistent-model"})
    assert deployment.status_code == 404  # refused: nothing recorded
    client.patch("/v1/contentsafety/text/blocklists/audited", headers=dev, json={"description": "d"})
    owner = {"Authorization": f"Bearer {keys['owner']}"}
    entries = client.get(f"/v1/organization/projects/{ids['project_id']}/audit_logs", headers=owner,
                         params={"type": "blocklist.updated"}).json()["data"]
    assert entries[0]["target"] == "audited" and entries[0]["actor"]["api_key_id"]
    assert entries[0]["actor"]["user_id"] == client.get("/v1/me", headers=dev).json()["user"]["id"]
    assert not client.get(f"/v1/organization/projects/{ids['project_id']}/audit_logs", headers=owner,
                          params={"type": "deployment.created"}).json()["data"]


def test_the_documented_matrix_is_the_matrix():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "access.md").read_text()
    for action, (_, covers) in access.ACTIONS.items():
        cells = " | ".join("yes" if access.can(r, action) else "—" for r in access.ROLES)
        assert f"| `{action}` | {cells} | {covers} |" in doc, action


def test_project_names_are_unique_in_a_hub(world):
    app, client, keys, ids = world
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    first = client.post("/v1/organization/projects", headers=admin, json={"name": "twins"})
    assert first.status_code == 200 and first.json()["role"] == "owner"
    again = client.post("/v1/organization/projects", headers=admin, json={"name": "twins"})
    assert again.status_code == 409 and again.json()["error"]["param"] == "name"
