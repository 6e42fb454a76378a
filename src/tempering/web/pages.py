"""The portal's entry pages: static files, sign in and out, the language, projects (switch, "New project"),
the model catalog and data files (upload with every problem and its line). Parse, call a service, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response

from tempering.errors import TemperingError, status_of
from tempering.services.access import Caller
from tempering.web import render, session
from tempering.web.render import page, redirect

router = APIRouter(include_in_schema=False, dependencies=[Depends(render.csrf_guard)])
PageCaller = Annotated[Caller, Depends(session.page_caller)]

STATIC = Path(__file__).parent / "static"
# The files /static serves (nothing else under the folder is reachable) and their media types.
STATIC_FILES = {"htmx.min.js": "text/javascript", "uPlot.iife.min.js": "text/javascript",
                "uPlot.min.css": "text/css", "portal.css": "text/css", "portal.js": "text/javascript",
                "playground.js": "text/javascript", "upload.js": "text/javascript",
                "LICENSE.htmx": "text/plain", "LICENSE.uplot": "text/plain"}


@router.get("/static/{name}")
def static(name: str) -> Response:
    """A vendored or portal asset, cached for a day (the vendored ones are pinned: web/static/VENDORED.md)."""
    if name not in STATIC_FILES:
        return Response(status_code=404)
    return FileResponse(STATIC / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/")
def home(caller: PageCaller):
    return redirect("/catalog" if caller.project_id else "/projects")


# ---------------------------------------------------------------- sign in and out


def _safe_next(target: str | None) -> str:
    """Only a path of this site (never another site's address) to go to after signing in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/signin")
def signin_page(request: Request, next: str = "/"):
    if session.signed_in(request) is not None:
        return redirect(_safe_next(next))
    return page(request, None, "signin.html", next=_safe_next(next), username_value="")


@router.post("/signin")
def signin(request: Request, username: Annotated[str, Form(max_length=200)],
           password: Annotated[str, Form(max_length=1024)], next: Annotated[str, Form()] = "/"):
    from tempering.services.accounts import sign_in
    from tempering.services.projects import projects_of

    _ = render.i18n.gettext_for(None)
    origin = request.headers.get("origin")
    if origin and origin != str(request.base_url).rstrip("/"):  # another site posting a sign-in (login CSRF)
        return page(request, None, "signin.html", status=403, next="/", username_value="",
                    signin_error=_("This sign-in form was sent from another site."))
    address = request.client.host if request.client else None
    db = request.app.state.db
    try:
        with db.session() as s:
            user = sign_in(s, request.app.state.sign_in, username, password, address)
            mine = projects_of(s, Caller(project_id="", role="", user_id=user.id))
            project_id = mine[0][0].id if mine else None
            s.expunge(user)
    except TemperingError as exc:  # wrong password, or locked out: the service's own words
        message = (_("Incorrect username or password.") if exc.code == "invalid_credentials"
                   else exc.message)
        return page(request, None, "signin.html", status=429 if exc.code == "sign_in_locked" else 401,
                    next=_safe_next(next), username_value=username, signin_error=message)
    response = redirect(_safe_next(next) if project_id else "/projects")
    session.start(request, response, user, project_id)
    return response


@router.post("/signout")
def signout(caller: PageCaller):
    response = redirect("/signin")
    session.end(response)
    return response


@router.post("/locale")
def set_locale(request: Request, caller: PageCaller, locale: Annotated[str, Form(max_length=8)]):
    from tempering.services.accounts import get_user, update_user
    from tempering.web.i18n import locale_of

    with request.app.state.db.session() as s:
        update_user(s, get_user(s, caller.user_id), caller, locale=locale_of(locale))
    return redirect(request.headers.get("referer", "/") if _same_site(request) else "/")


def _same_site(request: Request) -> bool:
    referer = request.headers.get("referer", "")
    return referer.startswith(str(request.base_url))


# ---------------------------------------------------------------- projects


def _projects_page(request: Request, caller: Caller, status: int = 200, **context):
    from tempering.services import access
    from tempering.store.models import Hub

    with request.app.state.db.session(write=False) as s:
        hubs = list(s.query(Hub).order_by(Hub.created_at))
        admin_hubs = [h for h in hubs if caller.is_admin or access.is_hub_admin(s, caller.user_id, h.id)]
        for hub in admin_hubs:
            s.expunge(hub)
    return page(request, caller, "projects.html", status=status, admin_hubs=admin_hubs,
                may_create_hubs=caller.is_admin, **context)


@router.get("/projects")
def projects_page(request: Request, caller: PageCaller):
    return _projects_page(request, caller)


@router.post("/projects/switch")
def switch_project(request: Request, caller: PageCaller, project_id: Annotated[str, Form(max_length=64)]):
    from tempering.services import access

    with request.app.state.db.session(write=False) as s:
        role = access.project_role(s, caller.user_id, project_id)
    if role is None:
        _ = render.gettext_of(request, caller)
        return _projects_page(request, caller, status=404, error=_("No such project."))
    response = redirect("/catalog")
    portal = session.current(request)
    session.write(request, response, session.PortalSession(portal.user_id, portal.epoch, project_id, portal.csrf))
    return response


@router.post("/hubs")
def new_hub(request: Request, caller: PageCaller, name: Annotated[str, Form(max_length=400)]):
    """A new hub (server administrators; ``services.projects.create_hub``), to create projects in."""
    from tempering.services import projects

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            projects.create_hub(s, name, caller)
    except TemperingError as exc:
        return _projects_page(request, caller, status=400, hub_error=exc.message)
    return _projects_page(request, caller, notice=_("Created the hub %(name)s.", name=name.strip()))


@router.post("/hubs/{hub_id}/projects")
def new_project(request: Request, caller: PageCaller, hub_id: str, name: Annotated[str, Form(max_length=400)]):
    from tempering.services import projects

    try:
        with request.app.state.db.session() as s:
            project = projects.create_project(s, projects.get_hub(s, hub_id), name, caller)
            project_id = project.id
    except TemperingError as exc:
        return _projects_page(request, caller, status=400, project_error=exc.message, project_error_hub=hub_id)
    response = redirect("/catalog")
    portal = session.current(request)
    session.write(request, response, session.PortalSession(portal.user_id, portal.epoch, project_id, portal.csrf))
    return response


# ---------------------------------------------------------------- catalog


def _size(parameters: int) -> str:
    return f"{parameters / 1e9:.1f}B" if parameters >= 1e9 else f"{parameters / 1e6:.0f}M"


WEIGHTS = {"ready": "present on this server", "embedded": "embedded (prepared on first use)",
           "not downloaded": "not on this server"}


@router.get("/catalog")
def catalog_page(request: Request, caller: PageCaller, q: str = ""):
    from tempering.services.catalog import search

    entries = search(q[:200] or None)
    return page(request, caller, "catalog.html", q=q[:200], entries=entries, weights=WEIGHTS,
                sizes={e.card.id: _size(e.card.parameters) for e in entries})


# ---------------------------------------------------------------- data files


def data_page(request: Request, caller: Caller, status: int = 200, **context):
    from tempering.services import files

    with request.app.state.db.session(write=False) as s:
        rows = files.list_files(s, caller.project_id)
        for row in rows:
            s.expunge(row)
    return page(request, caller, "data.html", status=status, files=rows, **context)


@router.get("/data")
def data_files(request: Request, caller: PageCaller):
    return data_page(request, caller)


def store_upload(request: Request, caller: Caller, upload: UploadFile, purpose: str = "fine-tune"):
    """An uploaded file into the artifact store and registered (``services.files``, as the API's upload):
    its row, valid or not (an invalid one keeps its problems)."""
    from tempering.services import files
    from tempering.store.models import new_id

    checked = files.check_upload(upload.filename, purpose)
    store, limit = request.app.state.store, request.app.state.settings.max_upload_bytes
    file_id = new_id("file-")
    writer = store.open_upload(file_id, limit)
    try:
        while chunk := upload.file.read(1 << 20):
            writer.write(chunk)
        size, sha256 = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return files.register_upload(request.app.state.db, caller.project_id, store, file_id, checked, size, sha256)


@router.post("/data")
def upload_data(request: Request, caller: PageCaller, file: Annotated[UploadFile, File()],
                purpose: Annotated[str, Form(max_length=16)] = "fine-tune"):
    """Store and check an upload, then show the file's page (post, redirect, get: a reload uploads nothing).
    The page's own uploader (``static/upload.js``, header ``X-Tempering-Upload``) gets the page's address
    instead of the redirect, which its request would follow, computing the file's report once for nothing."""
    try:
        row = store_upload(request, caller, file, purpose)
    except TemperingError as exc:
        return data_page(request, caller, status=400, error=exc.message)
    location = f"/data/{row.id}?uploaded=1"
    if request.headers.get("x-tempering-upload") == "1":
        return Response(status_code=204, headers={"X-Tempering-Location": location})
    return redirect(location)


def _file_page(request: Request, caller: Caller, file_id: str, status: int = 200, model: str = "",
               validation_file: str = "", **context):
    """A data file: every problem with its line, and the quality report (``services.datasets.report``, as
    ``POST /v1/files/{id}/report``) with its label balance and duplicates; with a catalog ``model``, its token
    counts (a histogram of tokens per example, lines over the context) and, with a ``validation_file``, the
    leakage between the two files."""
    from tempering.data.findings.finding import bin_label
    from tempering.services import catalog, datasets, files

    store = request.app.state.store
    with request.app.state.db.session(write=False) as s:
        try:
            row = datasets.data_file(s, caller.project_id, file_id)
        except TemperingError as exc:
            raise session.PageForbidden(exc.message, 404) from None
        s.expunge(row)
        problems = datasets.file_issues(s, caller.project_id, store, row.id)
        others = [(f.id, f.filename) for f in files.list_files(s, caller.project_id)
                  if f.id != row.id and f.purpose == row.purpose]
        report = None
        if model or validation_file:
            try:
                report = datasets.report(s, caller.project_id, store, row.id, model=model or None,
                                         validation_file_id=validation_file or None)
            except TemperingError as exc:  # the check asked for failed: the plain report, the reason beside it
                context["check_error"] = exc.message
        if report is None:
            try:
                report = datasets.report(s, caller.project_id, store, row.id)
            except TemperingError as exc:  # a file that cannot be read as examples has its problems only
                context["report_error"] = exc.message
    context |= {"models": [e.card.id for e in catalog.search() if e.weights != "not downloaded"], "others": others,
                "chosen_model": model, "chosen_validation": validation_file}
    tokens = report.counts.tokens_per_example if report is not None else None
    if tokens is not None and tokens.histogram:
        most = max(b.count for b in tokens.histogram) or 1
        context["token_bins"] = [(bin_label(b.low, b.high, whole=True), b.count,
                                  round(100 * b.count / most)) for b in tokens.histogram]
    if context.pop("uploaded", False):
        _ = render.gettext_of(request, caller)
        if row.status == "error":
            context["error"] = _("%(name)s is not valid training data; every problem is listed below.",
                                 name=row.filename)
        else:
            context["notice"] = _("Uploaded %(name)s: ready for fine-tuning.", name=row.filename)
    labels = []
    if report is not None and report.labels is not None:
        most = max(report.labels.counts.values(), default=1)
        labels = [(label, count, round(100 * count / most)) for label, count in report.labels.counts.items()]
    return page(request, caller, "file.html", status=status, file=row, problems=problems, report=report,
                labels=labels, **context)


@router.get("/data/{file_id}")
def data_file_page(request: Request, caller: PageCaller, file_id: str, uploaded: bool = False,
                   model: Annotated[str, Query(max_length=200)] = "",
                   validation_file: Annotated[str, Query(max_length=64)] = ""):
    """The file's page; ``model`` counts its tokens with a catalog model's tokenizer and template,
    ``validation_file`` checks the leakage between it and another file of the project."""
    return _file_page(request, caller, file_id, uploaded=uploaded, model=model, validation_file=validation_file)


@router.get("/files/{file_id}/download")
def download_file(request: Request, caller: PageCaller, file_id: str):
    """A file of the project as it is stored (an upload, a split, an export's zip): ``services.files``, as the
    API's ``GET /v1/files/{id}/content``."""
    from tempering.services import files

    with request.app.state.db.session(write=False) as s:
        try:
            row, path = files.content_path(s, caller.project_id, request.app.state.store, file_id)
        except TemperingError as exc:
            raise session.PageForbidden(exc.message, status_of(exc)) from None
    return FileResponse(path, media_type="application/octet-stream", filename=row.filename)


@router.post("/data/{file_id}/split")
def split_file(request: Request, caller: PageCaller, file_id: str,
               validation_fraction: Annotated[str, Form(max_length=16)] = "0.1",
               seed: Annotated[str, Form(max_length=16)] = "0"):
    """Split a file into training and validation files (``services.datasets.split``, as the API's)."""
    from tempering.services.datasets import split

    _ = render.gettext_of(request, caller)
    try:
        fraction, seed_value = float(validation_fraction), int(seed or 0)
        done = split(request.app.state.db, caller.project_id, request.app.state.store, file_id,
                     validation_fraction=fraction, seed=seed_value)
    except ValueError:
        return _file_page(request, caller, file_id, status=400, action_error=_("The fraction and the seed must be "
                                                                              "numbers."))
    except TemperingError as exc:
        return _file_page(request, caller, file_id, status=400, action_error=exc.message)
    return data_page(request, caller, notice=_("Split into %(train)s and %(validation)s.",
                                               train=done.train.filename, validation=done.validation.filename))


@router.post("/data/{file_id}/convert")
def convert_file(request: Request, caller: PageCaller, file_id: str,
                 to: Annotated[str, Form(max_length=32)] = "chat"):
    """Convert a file to chat JSONL or classification rows (``services.datasets.convert``, as the API's)."""
    from tempering.services.datasets import convert

    _ = render.gettext_of(request, caller)
    try:
        done = convert(request.app.state.db, caller.project_id, request.app.state.store, file_id, to=to)
    except TemperingError as exc:
        return _file_page(request, caller, file_id, status=400, action_error=exc.message)
    return data_page(request, caller, notice=_("Converted into %(name)s.", name=done.file.filename))
