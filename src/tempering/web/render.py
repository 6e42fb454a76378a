"""Rendering a page: one Jinja2 template per screen extending ``base.html``, the same handler answering the
full page or, for an htmx request, one named block of it (the fragment it swaps). Every template gets the
gettext function of the user's language (``_``), the caller's allowed actions (``allowed``: asked of
``services.access.can``, so a template only shows what the role permits and decides nothing), the projects for
the switcher and the session's CSRF token. Also the portal's error pages and the CSRF guard of form posts.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tempering.services import access
from tempering.services.access import Caller
from tempering.web import i18n, session

TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def environment():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["utc"] = _utc
    return env


def _utc(seconds: int | None) -> str:
    """A stored time (seconds since the epoch) as the pages show it."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if seconds else ""


def _user_and_projects(request: Request, caller: Caller | None):
    """The signed-in user's name and language, and their projects (for the switcher)."""
    if caller is None or not caller.user_id:
        return None, i18n.DEFAULT, []
    from tempering.services.projects import projects_of
    from tempering.store.models import User

    with request.app.state.db.session(write=False) as db:
        user = db.get(User, caller.user_id)
        projects = [(p.id, p.name, access.ROLE_NAMES.get(role, role)) for p, role in projects_of(db, caller)]
        return user.username, i18n.locale_of(user.locale), projects


def gettext_of(request: Request, caller: Caller | None):
    _, locale, _ = _user_and_projects(request, caller)
    return i18n.gettext_for(locale)


def page(request: Request, caller: Caller | None, template: str, status: int = 200, block: str | None = None,
         **context) -> HTMLResponse:
    """The page (or, for htmx or when ``block`` is named, one block of it)."""
    username, locale, projects = _user_and_projects(request, caller)
    portal = session.current(request)
    env = environment()
    full = {
        "_": i18n.gettext_for(locale), "locale": locale, "locales": i18n.LOCALES,
        "username": username, "projects": projects, "caller": caller,
        "project_id": caller.project_id if caller else None,
        "role_name": access.ROLE_NAMES.get(caller.role, "") if caller else "",
        "allowed": {action: bool(caller and caller.can(action)) for action in access.ACTIONS},
        "csrf": portal.csrf if portal else "", "csrf_field": session.CSRF_FIELD, "path": request.url.path,
        **context,
    }
    tmpl = env.get_template(template)
    if block is None and request.headers.get("hx-request") and request.headers.get("hx-target"):
        target = request.headers["hx-target"]
        block = target if target in tmpl.blocks else None
    if block is not None:
        html = "".join(tmpl.blocks[block](tmpl.new_context(full)))
    else:
        html = tmpl.render(full)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def csrf_guard(request: Request) -> None:
    """Every form post of a signed-in page carries the session's CSRF token (hidden field or htmx header)."""
    if request.method in ("GET", "HEAD") or session.current(request) is None:
        return  # reads change nothing; the sign-in post has no session yet (SameSite=Lax cookies guard it)
    form = await request.form()
    sent = form.get(session.CSRF_FIELD)
    session.check_csrf(request, sent if isinstance(sent, str) else None)


def install_handlers(app) -> None:
    @app.exception_handler(session.SignInRequired)
    async def _sign_in(request: Request, exc: session.SignInRequired):
        from urllib.parse import quote

        if exc.direct:
            return redirect(exc.next_path)
        if request.method in ("GET", "HEAD"):
            return redirect("/signin?next=" + quote(exc.next_path, safe="/"))
        _ = i18n.gettext_for(None)
        return page(request, None, "error.html", status=401, message=_("Your session has ended; sign in again."))

    @app.exception_handler(session.CsrfRefused)
    async def _csrf(request: Request, _exc):
        caller = None
        _ = gettext_of(request, caller)
        return page(request, caller, "error.html", status=403,
                    message=_("This form has expired or did not come from this site; reload the page and try "
                              "again."))

    @app.exception_handler(session.PageForbidden)
    async def _forbidden(request: Request, exc: session.PageForbidden):
        caller = request.scope.get("state", {}).get(session.CALLER) or session.caller_of(request)
        _ = gettext_of(request, caller)
        values = {k: _(v) for k, v in exc.values.items()}  # role names are msgids too
        return page(request, caller, "error.html", status=exc.status, message=_(exc.message, **values))
