"""Request dependencies: the database session and the caller's project, from ``Authorization: Bearer``."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from tempering.api.errors import APIError
from tempering.store.models import ApiKey, Project

KEY_PREFIX = "tk-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(session: Session, project_id: str, name: str, role: str = "owner") -> str:
    """Store a new key's hash and return the key itself, which is shown once and never stored."""
    key = new_api_key()
    session.add(ApiKey(project_id=project_id, name=name, prefix=key[:10], key_hash=hash_key(key), role=role))
    return key


def ensure_admin_key(db) -> str | None:
    """On first start: a default project and an owner key (returned, to be printed once)."""
    with db.session() as session:
        if session.scalars(select(ApiKey).limit(1)).first() is not None:
            return None
        project = Project(name="default")
        session.add(project)
        session.flush()
        return create_key(session, project.id, "admin")


def get_session(request: Request):
    """The request's unit of work; only mutating methods take the write lock (when first used)."""
    with request.app.state.db.session(write=request.method not in ("GET", "HEAD", "OPTIONS")) as session:
        yield session


# scope="function": commit before the response is sent, so a client that reads right after writing sees it
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Caller:
    project_id: str
    key_id: str
    role: str


# Declares the bearer scheme in the OpenAPI schema; the header is checked below, so a missing or malformed one
# gets OpenAI's 401 envelope rather than FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer tk-…`")


CALLER_STATE = "tempering.caller"


def authenticate(db, authorization: str) -> Caller:
    """The caller named by an ``Authorization`` header, looked up in a short read-only transaction of its own
    (so a slow upload does not hold a database transaction open while it streams); 401 otherwise. Needs the
    headers only: ``api.limits`` calls it before any byte of the body is read."""
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                       code="invalid_api_key")
    with db.session(write=False) as session:
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key.strip()))).first()
    if row is None or row.revoked:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return Caller(project_id=row.project_id, key_id=row.id, role=row.role)


def current_caller(request: Request,
                   _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> Caller:
    """The caller's project: the one the request guard found from the headers (``api.limits``), else looked
    up here (an app mounted without the guard, as some tests build it)."""
    cached = request.scope.get("state", {}).get(CALLER_STATE)
    if cached is not None:
        return cached
    return authenticate(request.app.state.db, request.headers.get("authorization", ""))


CallerDep = Annotated[Caller, Depends(current_caller)]
