"""The portal's sessions: a signed cookie naming the user, the ``session_epoch`` it was signed in, the current
project and a CSRF token; the caller a portal page acts as; the CSRF check of every form post.

The cookie is signed with itsdangerous (the key from ``app.state.cipher.signing_key()``), HttpOnly, SameSite=Lax,
and expires after ``MAX_AGE`` seconds. It holds no role: the user's current role in the current project is read
on every request (``access.project_role``), so a demotion applies at once, and a password reset or disabling the
user (both move ``User.session_epoch`` on) ends every session signed before. Knows nothing of the REST API.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

from tempering.services import access
from tempering.services.access import Caller
from tempering.web.i18n import N_

COOKIE = "tempering_session"
MAX_AGE = 12 * 3600  # seconds a sign-in lasts
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"  # what htmx sends (hx-headers on <body>)
STATE = "tempering.portal"  # request.scope["state"] key of the resolved session
CALLER = "tempering.portal.caller"  # ... and of the page's caller, once authorized


class SignInRequired(Exception):
    """No valid session on a portal page: the portal answers with a redirect to the sign-in page."""

    def __init__(self, next_path: str = "/", *, direct: bool = False):
        self.next_path = next_path
        self.direct = direct  # go to next_path itself (a signed-in user without a project: to choose one)


class CsrfRefused(Exception):
    """A form post without the session's CSRF token."""


class PageForbidden(Exception):
    """The caller's role does not allow a page's action (or a page's object is not there). ``message`` is a
    gettext msgid the error page translates, with ``%(name)s`` placeholders filled from ``values``; a core
    error's own message passes through as it is."""

    def __init__(self, message: str, status: int = 403, **values):
        self.message, self.status, self.values = message, status, values


@dataclass(frozen=True)
class PortalSession:
    user_id: str
    epoch: int
    project_id: str | None
    csrf: str


def _serializer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.cipher.signing_key(), salt="tempering-portal-session")


def read(request: Request) -> PortalSession | None:
    """The session the request's cookie holds, if its signature and age are good (the user is checked
    separately)."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(request).loads(raw, max_age=MAX_AGE)
        return PortalSession(str(data["u"]), int(data["e"]), data.get("p"), str(data["c"]))
    except (BadSignature, KeyError, TypeError, ValueError):
        return None


def write(request: Request, response, session: PortalSession) -> None:
    value = _serializer(request).dumps({"u": session.user_id, "e": session.epoch, "p": session.project_id,
                                        "c": session.csrf})
    response.set_cookie(COOKIE, value, max_age=MAX_AGE, httponly=True, samesite="lax", path="/",
                        secure=request.url.scheme == "https")


def start(request: Request, response, user, project_id: str | None) -> PortalSession:
    """A new session for a user who just signed in (a fresh CSRF token)."""
    session = PortalSession(user.id, user.session_epoch, project_id, secrets.token_urlsafe(24))
    write(request, response, session)
    return session


def end(response) -> None:
    response.delete_cookie(COOKIE, path="/")


def current(request: Request) -> PortalSession | None:
    """The session ``caller_of`` resolved for this request."""
    return request.scope.get("state", {}).get(STATE)


def caller_of(request: Request) -> Caller | None:
    """The caller a portal page acts as: the session's user in the session's current project (else their first
    project) with their current role there; None without a valid session (no cookie, a bad signature, expired,
    the user disabled or their sessions ended). A user without any project gets an empty project and no role."""
    from tempering.services.projects import projects_of
    from tempering.store.models import User

    portal = read(request)
    if portal is None:
        return None
    with request.app.state.db.session(write=False) as db:
        user = db.get(User, portal.user_id)
        if user is None or user.disabled or user.session_epoch != portal.epoch:
            return None
        role = access.project_role(db, user.id, portal.project_id) if portal.project_id else None
        project_id = portal.project_id
        if role is None:  # the project went away, or the user's part in it: their first project
            member_of = projects_of(db, Caller(project_id="", role="", user_id=user.id))
            if member_of:
                project_id, role = member_of[0][0].id, member_of[0][1]
            else:
                project_id, role = "", ""
        caller = Caller(project_id=project_id, role=role, user_id=user.id, is_admin=user.is_admin,
                        address=request.client.host if request.client else None)
    request.scope.setdefault("state", {})[STATE] = PortalSession(user.id, user.session_epoch, project_id,
                                                                 portal.csrf)
    return caller


def check_csrf(request: Request, sent: str | None) -> None:
    """The session's CSRF token must come with every form post, as a hidden field or htmx's header."""
    portal = current(request)
    token = sent or request.headers.get(CSRF_HEADER, "")
    if portal is None or not token or not hmac.compare_digest(token.encode(), portal.csrf.encode()):
        raise CsrfRefused()


def authorize_page(request: Request, action: str) -> Caller:
    """The caller of a portal page, allowed its action (``api.permissions.authorize`` calls this for every
    page of ``web.PAGES``): ``SignInRequired`` without a session, ``PageForbidden`` with a role too low (a
    signed-in user without a project is sent to choose one)."""
    caller = caller_of(request)
    if caller is None:
        raise SignInRequired(request.url.path if request.method in ("GET", "HEAD") else "/")
    if action in access.HUB_ACTIONS:
        hub_id = request.path_params.get("hub_id", "")
        with request.app.state.db.session(write=False) as db:
            if not (caller.is_admin or (action == "hub.admin" and access.is_hub_admin(db, caller.user_id, hub_id))):
                raise PageForbidden(N_("Only an admin of this hub may do this."))
        request.scope["state"][CALLER] = caller
        return caller
    if not caller.can(action):
        if not caller.project_id:
            raise SignInRequired("/projects", direct=True)
        least = access.ROLE_NAMES[access.ACTIONS[action][0]]
        raise PageForbidden(N_("Your role in this project (%(role)s) does not allow this; it needs %(least)s or "
                               "higher."), role=access.ROLE_NAMES.get(caller.role, caller.role), least=least)
    request.scope["state"][CALLER] = caller
    return caller


def page_caller(request: Request) -> Caller:
    """The caller ``authorize_page`` allowed (a page handler's dependency; the app-wide one ran first)."""
    caller = request.scope.get("state", {}).get(CALLER)
    if caller is None:
        raise SignInRequired(request.url.path)
    return caller


def signed_in(request: Request) -> Caller | None:
    """The caller of a public page when someone is signed in (the sign-in page sends them on)."""
    return caller_of(request)
