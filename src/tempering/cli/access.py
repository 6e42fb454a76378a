"""People and access. ``tempering users`` works on this machine's server database (run it where the server
runs: it is how the first administrator resets a lost password); ``tempering hubs``, ``tempering projects`` and
``tempering keys`` talk to a running server (``--server``) with an API key, as anyone would."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Annotated

import typer
from rich.table import Table

from tempering.cli.common import out, print_json, safe
from tempering.cli.deploy import ApiKey, Json, Server, _client
from tempering.client import segment

users = typer.Typer(help="Users of this machine's server (its database, not over HTTP).", no_args_is_help=True)
projects = typer.Typer(help="A server's projects and their members.", no_args_is_help=True)
keys = typer.Typer(help="Your API keys in a project of a server.", no_args_is_help=True)
hubs = typer.Typer(help="A server's hubs: their shared settings (prices, default quotas, content safety) and "
                   "secrets.", no_args_is_help=True)
Hub = Annotated[str, typer.Argument(help="The hub's id (tempering hubs list).")]

Project = Annotated[str | None, typer.Option("--project", help="A project id; default: the API key's project.")]
Role = Annotated[str, typer.Option(help="owner, ai_developer or reader.")]


def _database():
    from tempering.settings import get_settings
    from tempering.store.db import Database

    db = Database(get_settings().database)
    db.migrate()
    return db


def _password(from_stdin: bool) -> str | None:
    if not from_stdin:
        return None  # a generated one, printed once
    return sys.stdin.readline().rstrip("\n")


@users.command("create")
def create_user(
    username: Annotated[str, typer.Argument(help="Letters, digits, '.', '_', '@', '-'.")],
    admin: Annotated[bool, typer.Option("--admin", help="A server administrator (creates hubs and users).")] = False,
    name: Annotated[str, typer.Option(help="A display name.")] = "",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard "
                                                                            "input; default: generate one.")] = False,
) -> None:
    """Create a user; prints the generated password once."""
    from tempering.services import accounts

    db = _database()
    with db.session() as session:
        user, password = accounts.create_user(session, username, _password(password_stdin), name=name,
                                              is_admin=admin)
        user_id = user.id
    out.print(f"Created user {safe(username)} ({user_id}).")
    if not password_stdin:
        out.print(f"Password (shown once): {password}")


@users.command("reset-password")
def reset_password(
    username: Annotated[str, typer.Argument(help="The user whose password to replace.")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the new password from standard "
                                                                            "input; default: generate one.")] = False,
) -> None:
    """Replace a user's password (their portal sessions end); prints the generated one once."""
    from tempering.errors import not_found
    from tempering.services import accounts

    db = _database()
    with db.session() as session:
        user = accounts.user_by_name(session, username)
        if user is None:
            raise not_found("user", username, "username")
        password = accounts.reset_password(session, user, _password(password_stdin))
    out.print(f"Password of {safe(username)} replaced.")
    if not password_stdin:
        out.print(f"Password (shown once): {password}")


@users.command("list")
def list_users(json_out: Json = False) -> None:
    """The server's users."""
    from sqlalchemy import select

    from tempering.store.models import User

    db = _database()
    with db.session(write=False) as session:
        rows = [{"id": u.id, "username": u.username, "name": u.name, "is_admin": u.is_admin, "disabled": u.disabled}
                for u in session.scalars(select(User).order_by(User.created_at))]
    if json_out:
        return print_json(rows)
    table = Table("id", "username", "name", "admin", "disabled")
    for row in rows:
        table.add_row(row["id"], safe(row["username"]), safe(row["name"]), str(row["is_admin"]), str(row["disabled"]))
    out.print(table)


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M") if ts else "-"


@projects.command("list")
def list_projects(server: Server, api_key: ApiKey = None, json_out: Json = False) -> None:
    """The projects you have a role in."""
    data = _client(server, api_key).organization("GET", "/projects")["data"]
    if json_out:
        return print_json(data)
    table = Table("id", "name", "hub", "your role", "created")
    for p in data:
        table.add_row(p["id"], safe(p["name"]), p["hub_id"] or "-", p["role"] or "-", _when(p["created_at"]))
    out.print(table)


@projects.command("create")
def create_project(name: Annotated[str, typer.Argument(help="The project's name.")], server: Server,
                   hub: Annotated[str | None, typer.Option(help="A hub id; default: your key's project's hub.")] = None,
                   api_key: ApiKey = None, json_out: Json = False) -> None:
    """Create a project (hub admins); you become its Owner."""
    path = f"/hubs/{segment(hub)}/projects" if hub else "/projects"
    created = _client(server, api_key).organization("POST", path, {"name": name})
    if json_out:
        return print_json(created)
    out.print(f"Created project {safe(created['name'])} ({created['id']}).")


@projects.command("members")
def members(server: Server, project: Project = None, api_key: ApiKey = None, json_out: Json = False) -> None:
    """A project's members and their roles."""
    client = _client(server, api_key)
    data = client.organization("GET", f"/projects/{segment(client.project_id(project))}/users")["data"]
    if json_out:
        return print_json(data)
    table = Table("user id", "username", "role", "added")
    for m in data:
        table.add_row(m["id"], safe(m["username"]), m["role"], _when(m["added_at"]))
    out.print(table)


@projects.command("add-member")
def add_member(user_id: Annotated[str, typer.Argument(help="The user's id (tempering users list).")],
               server: Server, role: Role = "reader", project: Project = None, api_key: ApiKey = None) -> None:
    """Add a user to a project with a role (Owners)."""
    client = _client(server, api_key)
    added = client.organization("POST", f"/projects/{segment(client.project_id(project))}/users",
                                {"user_id": user_id, "role": role})
    out.print(f"{safe(added['username'])} is now {added['role']}.")


@projects.command("set-role")
def set_role(user_id: Annotated[str, typer.Argument(help="The member's user id.")], role: Annotated[str, typer.Argument(
             help="owner, ai_developer or reader.")], server: Server, project: Project = None,
             api_key: ApiKey = None) -> None:
    """Change a member's role (Owners); their keys follow at once."""
    client = _client(server, api_key)
    changed = client.organization("POST", f"/projects/{segment(client.project_id(project))}/users/{segment(user_id)}", {"role": role})
    out.print(f"{safe(changed['username'])} is now {changed['role']}.")


@projects.command("remove-member")
def remove_member(user_id: Annotated[str, typer.Argument(help="The member's user id.")], server: Server,
                  project: Project = None, api_key: ApiKey = None) -> None:
    """Remove a member (Owners); their keys in the project stop working."""
    client = _client(server, api_key)
    client.organization("DELETE", f"/projects/{segment(client.project_id(project))}/users/{segment(user_id)}")
    out.print(f"Removed {user_id}.")


@keys.command("list")
def list_keys(server: Server, project: Project = None, api_key: ApiKey = None, json_out: Json = False) -> None:
    """Your keys in the project (every key, for an Owner)."""
    client = _client(server, api_key)
    data = client.organization("GET", f"/projects/{segment(client.project_id(project))}/api_keys")["data"]
    if json_out:
        return print_json(data)
    table = Table("id", "name", "key", "role", "holder", "expires", "last used")
    for k in data:
        table.add_row(k["id"], safe(k["name"]), k["redacted_value"], k["role"], safe(k["owner"]["name"] or "-"),
                      _when(k["expires_at"]), _when(k["last_used_at"]))
    out.print(table)


@keys.command("create")
def create_key(name: Annotated[str, typer.Argument(help="What the key is for.")], server: Server,
               role: Annotated[str | None, typer.Option(help="At most your role; default: your role.")] = None,
               expires_in_days: Annotated[int | None, typer.Option(min=1, help="Expire after this many days.")] = None,
               project: Project = None, api_key: ApiKey = None, json_out: Json = False) -> None:
    """Create a key of your own; it is printed once."""
    import time

    client = _client(server, api_key)
    body = {"name": name, "role": role,
            "expires_at": int(time.time()) + expires_in_days * 86400 if expires_in_days else None}
    created = client.organization("POST", f"/projects/{segment(client.project_id(project))}/api_keys",
                                  {k: v for k, v in body.items() if v is not None})
    if json_out:
        return print_json(created)
    out.print(f"Created key {created['id']} ({created['role']}); shown once:\n{created['value']}")


@keys.command("revoke")
def revoke_key(key_id: Annotated[str, typer.Argument(help="The key's id (tempering keys list).")], server: Server,
               project: Project = None, api_key: ApiKey = None) -> None:
    """Revoke a key: refused from its next request on."""
    client = _client(server, api_key)
    client.organization("DELETE", f"/projects/{segment(client.project_id(project))}/api_keys/{segment(key_id)}")
    out.print(f"Revoked {key_id}.")


# -- hubs ----------------------------------------------------------------------------------------------------------


def _hub_path(hub: str, *rest: str) -> str:
    """A hub's URL (and what is under it), each part quoted: a name is never a path (the server checks names)."""
    return "/".join(["/hubs", *(segment(part) for part in (hub, *rest))])


@hubs.command("list")
def list_hubs(server: Server, api_key: ApiKey = None, json_out: Json = False) -> None:
    """The hubs you belong to (every hub for a server administrator)."""
    data = _client(server, api_key).organization("GET", "/hubs")["data"]
    if json_out:
        return print_json(data)
    table = Table("id", "name", "settings", "created")
    for h in data:
        table.add_row(h["id"], safe(h["name"]), ", ".join(sorted(h["settings"])) or "-", _when(h["created_at"]))
    out.print(table)


@hubs.command("show")
def show_hub(hub: Hub, server: Server, api_key: ApiKey = None) -> None:
    """A hub and its settings, as JSON (secrets are listed by name only)."""
    client = _client(server, api_key)
    shown = client.organization("GET", _hub_path(hub))
    shown["secrets"] = [s["name"] for s in client.organization("GET", _hub_path(hub, "secrets"))["data"]]
    print_json(shown)


@hubs.command("set")
def set_hub_setting(hub: Hub,
                    key: Annotated[str, typer.Argument(help="The setting: prices, default_quotas, content_safety, "
                                                            "content_filter_policy.")],
                    value: Annotated[str, typer.Argument(help="Its value as JSON; null removes the setting.")],
                    server: Server, api_key: ApiKey = None) -> None:
    """Replace one of a hub's settings (hub admins), e.g. its content-safety backend:
    tempering hubs set HUB content_safety '{"backend": "openai", "endpoint": "https://…/v1",
    "api_key_secret": "moderation"}'."""
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="VALUE") from None
    updated = _client(server, api_key).organization("POST", _hub_path(hub), {"settings": {key: parsed}})
    print_json(updated["settings"])


@hubs.command("secret")
def set_hub_secret(hub: Hub, name: Annotated[str, typer.Argument(help="The secret's name.")], server: Server,
                   api_key: ApiKey = None) -> None:
    """Set or rotate a hub secret (a remote backend's key) from standard input, never the command line:
    printf %s "$KEY" | tempering hubs secret HUB moderation."""
    value = sys.stdin.readline().rstrip("\n")
    if not value:
        raise typer.BadParameter("give the secret's value on standard input", param_hint="stdin")
    _client(server, api_key).organization("PUT", _hub_path(hub, "secrets", name), {"value": value})
    out.print(f"Set secret {safe(name)} of hub {hub}.")


@hubs.command("delete-secret")
def delete_hub_secret(hub: Hub, name: Annotated[str, typer.Argument(help="The secret's name.")], server: Server,
                      api_key: ApiKey = None) -> None:
    """Delete a hub secret."""
    _client(server, api_key).organization("DELETE", _hub_path(hub, "secrets", name))
    out.print(f"Deleted secret {safe(name)} of hub {hub}.")
