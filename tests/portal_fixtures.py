"""What the portal's tests share: a server app with no workers and a TestClient on it, signing in, the CSRF
token of a page, a project member with a role, and small training files. Imported by the portal test modules
(the fixtures by their names, ``app`` and ``client``)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import chat_example
from fastapi.testclient import TestClient

TRAIN = "".join(json.dumps(chat_example(f"What color is item {i}?", f"Item {i} is {['red', 'blue'][i % 2]}."))
                + "\n" for i in range(20)).encode()
BAD = TRAIN + b'{"messages": [{"role": "user", "content": "no answer"}]}\n' + b"not json\n"


@pytest.fixture(name="app")
def app_fixture(tempering_home):
    from tempering.api.app import create_app
    from tempering.settings import get_settings

    return create_app(get_settings(), workers=0)


@pytest.fixture(name="client")
def client_fixture(app):
    with TestClient(app) as c:
        yield c


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, username: str, password: str, follow: bool = True):
    return client.post("/signin", data={"username": username, "password": password, "next": "/catalog"},
                       follow_redirects=follow)


def admin(client, app):
    response = sign_in(client, "admin", app.state.initial_admin_password)
    assert response.status_code == 200, response.text
    return csrf_of(response.text)


def add_user(app, username: str, role: str) -> str:
    """A user with a role in the default project; returns their password."""
    from sqlalchemy import select

    from tempering.services.accounts import create_user
    from tempering.store.models import Project, ProjectMember

    with app.state.db.session() as s:
        user, password = create_user(s, username, "correct-horse-battery")
        project = s.scalars(select(Project)).first()
        s.add(ProjectMember(project_id=project.id, user_id=user.id, role=role))
    return password
