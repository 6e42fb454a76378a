"""Request dependencies: the database session, and the caller an ``Authorization: Bearer`` key names (which
route allows what is ``api.permissions``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tempering.api.errors import APIError
from tempering.services import access
from tempering.services.access import Caller


def ensure_admin_key(db):
    """On first start: the default hub, the admin user, a default project and an owner key (``accounts.bootstrap``;
    what it returns is printed once)."""
    from tempering.services.accounts import bootstrap

    return bootstrap(db)


def get_session(request: Request):
    """The request's unit of work; only mutating methods take the write lock (when first used)."""
    with request.app.state.db.session(write=request.method not in ("GET", "HEAD", "OPTIONS")) as session:
        yield session


# scope="function": commit before the response is sent, so a client that reads right after writing sees it
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


CALLER_STATE = "tempering.caller"


def client_address(scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def authenticate(db, authorization: str, address: str | None = None) -> Caller:
    """The caller named by an ``Authorization`` header, looked up in a short read-only transaction of its own
    (so a slow upload does not hold a database transaction open while it streams); 401 otherwise. Needs the
    headers only: ``api.limits`` calls it before any byte of the body is read."""
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                       code="invalid_api_key")
    try:
        with db.session(write=False) as session:
            caller = access.caller_of_key(session, key.strip())
    except access.Unauthenticated as exc:
        raise APIError(401, exc.message, code="invalid_api_key") from None
    access.touch_key(db, caller.key_id) if _due(caller.key_id) else None
    return replace(caller, address=address)


_touched: dict[str, float] = {}


def _due(key_id: str) -> bool:
    """Whether this process should record a key's use now (at most once a ``LAST_USED_RESOLUTION``)."""
    import time

    last = _touched.get(key_id, 0.0)
    if time.monotonic() - last < access.LAST_USED_RESOLUTION:
        return False
    if len(_touched) > 10_000:
        _touched.clear()
    _touched[key_id] = time.monotonic()
    return True
