"""Who may do what: the roles, the permission matrix (as data) and the caller a request acts as.

Roles follow Azure AI Foundry's: in a project, **Owner** does everything (members and keys included), **AI
Developer** uploads data, fine-tunes, evaluates, deploys and deletes models and deployments, **Reader** reads
everything and calls existing deployments. A hub's **admin** creates projects in it and is Owner of each; a
server **administrator** creates hubs and users. ``ACTIONS`` is the one matrix: the API's single permission
dependency (``api.permissions``) and the portal both ask ``can(role, action)``.

An API key belongs to one project and acts with the lower of its own role and its holder's current role
there (a user's membership, or a service account's role): demoting a user demotes their keys at once, and
removing them from the project stops their keys.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tempering.errors import TemperingError, not_found
from tempering.store.models import ApiKey, HubMember, Project, ProjectMember, ServiceAccount, User, now

# Project roles, least to most.
ROLES = ("reader", "ai_developer", "owner")
ROLE_NAMES = {"reader": "Reader", "ai_developer": "AI Developer", "owner": "Owner"}
_RANK = {role: rank for rank, role in enumerate(ROLES)}

# action → (the least project role allowed it, what it covers). Hub- and server-level actions are decided by
# hub admin and server admin standing instead (``HUB_ACTIONS``); "public" and "signed_in" need no project role.
ACTIONS: dict[str, tuple[str, str]] = {
    "project.read": ("reader", ("read the project's files, jobs, events, checkpoints, models, evaluations, "
                               "deployments, metrics, request logs, usage and costs")),
    "deployments.call": ("reader", ("call existing deployments: chat, completions, classifications, moderations, "
                                   "the playground")),
    "keys.self": ("reader", "list, create and revoke one's own API keys in the project"),
    "data.write": ("ai_developer", "upload, convert, split and delete files"),
    "jobs.write": ("ai_developer", "create, cancel, pause and resume fine-tuning jobs and sweeps"),
    "evaluations.write": ("ai_developer", "run and cancel evaluations"),
    "models.write": ("ai_developer", "delete and export fine-tuned models"),
    "deployments.write": ("ai_developer", ("create and delete deployments; change their content filter; "
                                          "edit blocklists")),
    "members.manage": ("owner", "add, change and remove the project's members"),
    "keys.manage": ("owner", "list and revoke anyone's keys; service accounts and their keys"),
    "project.manage": ("owner", "rename the project, set its quotas and rate limits, webhooks, delete it"),
    "audit.read": ("owner", "read the project's audit log"),
}
HUB_ACTIONS = {
    "hub.admin": "create projects in the hub; change its settings (prices, default quotas, filter policy) "
                 "and secrets",
    "server.admin": "create hubs and users; reset passwords",
}
PUBLIC = "public"  # no caller needed: health, the API's own docs, sign-in
SIGNED_IN = "signed_in"  # any valid caller: who am I, the projects I belong to


def can(role: str | None, action: str) -> bool:
    """Whether a project role may take an action (``ACTIONS``)."""
    if action in (PUBLIC, SIGNED_IN):
        return True
    least, _ = ACTIONS[action]
    return role in _RANK and _RANK[role] >= _RANK[least]


def lower(a: str | None, b: str | None) -> str | None:
    """The lower of two roles (None, no role, is lowest)."""
    if a not in _RANK or b not in _RANK:
        return None
    return a if _RANK[a] <= _RANK[b] else b


def check_role(role: str, param: str = "role") -> str:
    """A role as given by a caller: one of ``ROLES`` (OpenAI's "member" is read as AI Developer)."""
    role = {"member": "ai_developer"}.get(role, role)
    if role not in _RANK:
        raise TemperingError(f"unknown role '{role}': one of {', '.join(ROLES)}", param=param,
                             code="invalid_role")
    return role


@dataclass(frozen=True)
class Caller:
    """Who a request acts as, in which project, with which (effective) role."""

    project_id: str
    role: str
    key_id: str | None = None
    user_id: str | None = None
    service_account_id: str | None = None
    is_admin: bool = False  # a server administrator
    address: str | None = None  # the client's address, for the audit log

    def can(self, action: str) -> bool:
        return can(self.role, action)


KEY_PREFIX = "tk-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, project_id: str, name: str, role: str = "owner", *, user_id: str | None = None,
               service_account_id: str | None = None, expires_at: int | None = None) -> tuple[ApiKey, str]:
    """Store a new key's hash; return its row and the key itself, which is shown once and never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(project_id=project_id, name=name, prefix=key[:10], key_hash=hash_key(key), role=role,
                 user_id=user_id, service_account_id=service_account_id, expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, key


def project_role(session: Session, user_id: str, project_id: str) -> str | None:
    """A user's current role in a project: their membership, or Owner as an admin of its hub; None if none
    (or the user is disabled, or the project deleted)."""
    user = session.get(User, user_id)
    project = session.get(Project, project_id)
    if user is None or user.disabled or project is None or project.status != "active":
        return None
    member = session.get(ProjectMember, (project_id, user_id))
    if project.hub_id is not None and is_hub_admin(session, user_id, project.hub_id):
        return "owner"
    return member.role if member is not None else None


def is_hub_admin(session: Session, user_id: str, hub_id: str) -> bool:
    member = session.get(HubMember, (hub_id, user_id))
    return member is not None and member.role == "admin"


class Unauthenticated(TemperingError):
    """No valid credential: the API answers 401 (OpenAI's ``invalid_api_key``)."""

    code = "invalid_api_key"
    kind = "forbidden"


LAST_USED_RESOLUTION = 60  # seconds: a key's last-used time is written at most this often (not every request)


def caller_of_key(session: Session, key: str) -> Caller:
    """The caller an API key acts as; ``Unauthenticated`` if it is unknown, revoked, expired, or its holder no
    longer has a role in its project. One query: the key with its project, holder, membership and hub role."""
    from sqlalchemy import and_

    query = (select(ApiKey, Project, User, ProjectMember.role, HubMember.role, ServiceAccount)
             .join(Project, Project.id == ApiKey.project_id)
             .outerjoin(User, User.id == ApiKey.user_id)
             .outerjoin(ProjectMember, and_(ProjectMember.project_id == ApiKey.project_id,
                                            ProjectMember.user_id == ApiKey.user_id))
             .outerjoin(HubMember, and_(HubMember.hub_id == Project.hub_id, HubMember.user_id == ApiKey.user_id))
             .outerjoin(ServiceAccount, ServiceAccount.id == ApiKey.service_account_id)
             .where(ApiKey.key_hash == hash_key(key)))
    found = session.execute(query).first()
    if found is None or found[0].revoked:
        raise Unauthenticated("Incorrect API key provided.")
    row, project, user, member_role, hub_role, account = found
    if row.expires_at is not None and row.expires_at <= now():
        raise Unauthenticated("This API key has expired.")
    holder_role = None
    if project.status == "active" and user is not None and not user.disabled:
        holder_role = "owner" if hub_role == "admin" else member_role
    elif project.status == "active" and account is not None and not account.deleted:
        holder_role = account.role
    role = lower(row.role, holder_role)
    if role is None:
        raise Unauthenticated("This API key's holder no longer has a role in its project.")
    return Caller(project_id=row.project_id, role=role, key_id=row.id, user_id=row.user_id,
                  service_account_id=row.service_account_id, is_admin=bool(user and user.is_admin))


def touch_key(db, key_id: str) -> None:
    """Record a key's use, at most once a ``LAST_USED_RESOLUTION`` (a write per request would serialise every
    request on SQLite's write lock)."""
    from sqlalchemy import update

    cutoff = now() - LAST_USED_RESOLUTION
    with db.session() as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id)
                        .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < cutoff))
                        .values(last_used_at=now()))


def project_of(session: Session, project_id: str) -> Project:
    project = session.get(Project, project_id)
    if project is None or project.status != "active":
        raise not_found("project", project_id, "project_id")
    return project
