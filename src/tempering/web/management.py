"""Members and keys in the portal: the project's members (Owners add them by username with a role), and the
caller's API keys (create one, shown once; revoke). ``services.projects`` holds every rule (an Owner sees and
revokes anyone's keys, others their own; a key's role is at most its creator's)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from tempering.errors import TemperingError, status_of
from tempering.services import access
from tempering.services.access import Caller
from tempering.web import render, session
from tempering.web.render import page

router = APIRouter(include_in_schema=False, dependencies=[Depends(render.csrf_guard)])
PageCaller = Annotated[Caller, Depends(session.page_caller)]


def _members_page(request: Request, caller: Caller, status: int = 200, **context):
    from tempering.services import projects

    with request.app.state.db.session(write=False) as s:
        people = [(u.id, u.username, m.role, access.ROLE_NAMES.get(m.role, m.role))
                  for u, m in projects.members(s, caller.project_id)]
        keys = [(k.id, k.name, k.prefix, access.ROLE_NAMES.get(k.role, k.role), k.last_used_at)
                for k in projects.visible_keys(s, caller)]
        accounts = [(a.id, a.name, access.ROLE_NAMES.get(a.role, a.role), a.created_at)
                    for a in projects.service_accounts(s, caller.project_id)] if caller.can("keys.manage") else []
    roles = [(role, access.ROLE_NAMES[role]) for role in access.ROLES]
    return page(request, caller, "members.html", status=status, people=people, keys=keys, roles=roles,
                accounts=accounts, **context)


@router.get("/members")
def members_page(request: Request, caller: PageCaller):
    return _members_page(request, caller)


@router.post("/members")
def add_member(request: Request, caller: PageCaller, username: Annotated[str, Form(max_length=200)],
               role: Annotated[str, Form(max_length=32)]):
    from tempering.services import projects
    from tempering.services.accounts import user_by_name

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            user = user_by_name(s, username.strip())
            if user is None:
                return _members_page(request, caller, status=404, member_error=_("No user named %(name)s.",
                                                                                   name=username.strip()))
            projects.add_member(s, caller, user.id, role)
    except TemperingError as exc:
        return _members_page(request, caller, status=400, member_error=exc.message)
    return _members_page(request, caller, notice=_("Added %(name)s.", name=username.strip()))


@router.post("/members/{user_id}")
def change_member(request: Request, caller: PageCaller, user_id: str, role: Annotated[str, Form(max_length=32)]):
    """A member's new role (``services.projects.change_member``: a project keeps an Owner)."""
    from tempering.services import projects

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            user, _row = projects.change_member(s, caller, user_id, role)
            name = user.username
    except TemperingError as exc:
        return _members_page(request, caller, status=400, member_error=exc.message)
    return _members_page(request, caller, notice=_("Changed the role of %(name)s.", name=name))


@router.post("/members/{user_id}/remove")
def remove_member(request: Request, caller: PageCaller, user_id: str):
    from tempering.services import projects

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            projects.remove_member(s, caller, user_id)
    except TemperingError as exc:
        return _members_page(request, caller, status=400, member_error=exc.message)
    return _members_page(request, caller, notice=_("Removed the member."))


@router.post("/keys")
def create_key(request: Request, caller: PageCaller, name: Annotated[str, Form(max_length=200)]):
    from tempering.services import projects

    try:
        with request.app.state.db.session() as s:
            _, key = projects.create_user_key(s, caller, name)
    except TemperingError as exc:
        return _members_page(request, caller, status=400, key_error=exc.message)
    return _members_page(request, caller, new_key=key)


@router.post("/keys/{key_id}/revoke")
def revoke_key(request: Request, caller: PageCaller, key_id: str):
    from tempering.services import projects

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            projects.revoke_key(s, caller, key_id)
    except TemperingError as exc:
        return _members_page(request, caller, status=404, key_error=exc.message)
    return _members_page(request, caller, notice=_("Revoked the key."))


@router.post("/service-accounts")
def create_service_account(request: Request, caller: PageCaller, name: Annotated[str, Form(max_length=400)],
                           role: Annotated[str, Form(max_length=32)] = "ai_developer"):
    """A service account of the project (a key that belongs to no person, for a pipeline), its key shown once
    (``services.projects.create_service_account``, as the API's)."""
    from tempering.services import projects

    try:
        with request.app.state.db.session() as s:
            account, _row, key = projects.create_service_account(s, caller, name, role)
            account_name = account.name
    except TemperingError as exc:
        return _members_page(request, caller, status=status_of(exc), account_error=exc.message)
    return _members_page(request, caller, new_account_key=key, new_account=account_name)


@router.post("/service-accounts/{service_account_id}/delete")
def delete_service_account(request: Request, caller: PageCaller, service_account_id: str):
    """Delete a service account; its keys stop working at once."""
    from tempering.services import projects

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            account = projects.delete_service_account(s, caller, service_account_id)
            name = account.name
    except TemperingError as exc:
        return _members_page(request, caller, status=status_of(exc), account_error=exc.message)
    return _members_page(request, caller, notice=_("Deleted the service account %(name)s; its keys no longer work.",
                                                   name=name))


@router.get("/audit")
def audit_page(request: Request, caller: PageCaller):
    """The project's audit log, newest first (``services.audit``, as the API's ``audit_logs``)."""
    from tempering.services import audit
    from tempering.store.models import User

    with request.app.state.db.session(write=False) as s:
        rows = audit.events(s, caller.project_id, limit=200)
        names = {u.id: u.username for u in s.query(User).filter(User.id.in_({e.actor_user_id for e in rows}))}
        entries = [(e.created_at, e.action, names.get(e.actor_user_id, e.actor_key_id or ""), e.target or "",
                    e.address or "") for e in rows]
    return page(request, caller, "audit.html", entries=entries)


USAGE_DAYS = 7


@router.get("/usage")
def usage_page(request: Request, caller: PageCaller):
    """The current project's last seven days: costs by line item, trained tokens and chat tokens by model, per
    day (``services.usage``, the ledger behind ``/v1/organization/usage`` and ``/costs``)."""
    import time

    from tempering.services import usage

    day = 86400
    start = (int(time.time()) // day - (USAGE_DAYS - 1)) * day

    def query(group_by: list[str]) -> usage.UsageQuery:
        return usage.UsageQuery(start_time=start, bucket_width="1d", project_ids=[caller.project_id],
                                group_by=group_by, limit=USAGE_DAYS)

    settings = request.app.state.settings
    with request.app.state.db.session(write=False) as s:
        costs = usage.costs_page(s, caller, query(["line_item"]), settings)
        tuning = usage.usage_page(s, caller, "fine_tuning", query(["model"]), settings)
        chat = usage.usage_page(s, caller, "completions", query(["model"]), settings)
    rows = []
    for cost, tuned, used in zip(costs["data"], tuning["data"], chat["data"], strict=True):
        day_rows = [(r["line_item"], f"{r['amount']['value']:.4f}", "", "") for r in cost["results"]]
        day_rows += [(r["model"], "", r["trained_tokens"], "") for r in tuned["results"]]
        day_rows += [(r["model"], "", "", f"{r['input_tokens']} / {r['output_tokens']}") for r in used["results"]]
        rows += [(cost["start_time"], *row) for row in day_rows]
    total = sum(r["amount"]["value"] for bucket in costs["data"] for r in bucket["results"])
    return page(request, caller, "usage.html", rows=rows, total=f"{total:.4f}", days=USAGE_DAYS)
