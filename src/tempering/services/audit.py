"""The audit log: who did what, when. Written in the same unit of work as the change it records (so a change
rolled back leaves no entry), readable by a project's Owners; kept when the project is deleted."""

from __future__ import annotations

from contextvars import ContextVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from tempering.store.models import AuditEvent

# The caller of the request being served: set by the edge that authenticated it (the API's request guard, the
# portal's session), so the services record the actor without every function taking the caller.
ACTOR: ContextVar = ContextVar("tempering_actor", default=None)

# What is recorded (``action``): the list, named as object.verb.
ACTIONS = ("login.succeeded", "login.failed", "login.locked", "logout", "user.created", "user.password_reset",
           "user.updated", "api_key.created", "api_key.revoked", "service_account.created",
           "service_account.deleted", "member.added", "member.updated", "member.removed", "project.created",
           "project.updated", "project.deleted", "hub.created", "hub.updated", "secret.set", "secret.deleted",
           "job.created", "job.cancelled", "sweep.created", "sweep.cancelled", "job.paused", "job.resumed", "model.deleted", "deployment.created",
           "deployment.deleted", "content_filter.updated", "rate_limit.updated", "blocklist.updated",
           "safety_category.created", "safety_category.deleted", "webhook.created", "webhook.deleted")


def record(session: Session, action: str, *, caller=None, project_id: str | None = None,
           hub_id: str | None = None, target: str | None = None, user_id: str | None = None,
           address: str | None = None, **details) -> AuditEvent:
    """Add an entry. ``caller`` (a ``services.access.Caller``) supplies the actor, project and address unless
    they are given (else the request's ``ACTOR``); ``details`` is a small JSON object (never a secret)."""
    caller = caller if caller is not None else ACTOR.get()
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    event = AuditEvent(action=action, target=target, hub_id=hub_id, details=details,
                       project_id=project_id or (caller.project_id if caller is not None else None),
                       actor_user_id=user_id or (caller.user_id if caller is not None else None),
                       actor_key_id=caller.key_id if caller is not None else None,
                       address=address or (caller.address if caller is not None else None))
    session.add(event)
    return event


def events(session: Session, project_id: str, *, after: int | None = None, limit: int = 100,
           action: str | None = None) -> list[AuditEvent]:
    """A project's entries, newest first; ``after`` is a sequence number to page from (older than it)."""
    query = select(AuditEvent).where(AuditEvent.project_id == project_id)
    if after is not None:
        query = query.where(AuditEvent.seq < after)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    return list(session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit)))
