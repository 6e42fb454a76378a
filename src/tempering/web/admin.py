"""Your account (change your password) and the server administrator's pages: users (create one, its password shown once; reset a password; disable or
enable; make or unmake an administrator) and the content filter's custom categories (train one from a file of
the current project, delete one). ``services.accounts`` and ``services.safety_categories`` hold the rules, as
for the API's ``/v1/organization/users`` and ``/v1/contentsafety/categories``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from tempering.errors import TemperingError, status_of
from tempering.services.access import Caller
from tempering.web import render, session
from tempering.web.render import page

router = APIRouter(include_in_schema=False, dependencies=[Depends(render.csrf_guard)])
PageCaller = Annotated[Caller, Depends(session.page_caller)]


def _account_page(request: Request, caller: Caller, status: int = 200, **context):
    from tempering.store.models import User

    with request.app.state.db.session(write=False) as s:
        user = s.get(User, caller.user_id)
        facts = {"username": user.username, "name": user.name, "email": user.email or ""}
    return page(request, caller, "account.html", status=status, account=facts, **context)


@router.get("/account")
def account_page(request: Request, caller: PageCaller):
    return _account_page(request, caller)


@router.post("/account/password")
def change_password(request: Request, caller: PageCaller, current_password: Annotated[str, Form(max_length=1024)],
                    new_password: Annotated[str, Form(max_length=1024)],
                    repeat_password: Annotated[str, Form(max_length=1024)]):
    """Your own new password (``services.accounts.change_password``: the current one checked under the sign-in
    throttle); your other sessions end, this one goes on."""
    from tempering.services import accounts
    from tempering.store.models import User

    _ = render.gettext_of(request, caller)
    if new_password != repeat_password:
        return _account_page(request, caller, status=400, password_error=_("The two new passwords differ."))
    address = request.client.host if request.client else None
    try:
        with request.app.state.db.session() as s:
            user = s.get(User, caller.user_id)
            accounts.change_password(s, request.app.state.sign_in, user, current_password, new_password, address)
            epoch = user.session_epoch
    except TemperingError as exc:
        return _account_page(request, caller, status=status_of(exc), password_error=exc.message)
    response = _account_page(request, caller, notice=_("Changed your password; your other sessions have ended."))
    portal = session.current(request)
    session.write(request, response, session.PortalSession(portal.user_id, epoch, portal.project_id, portal.csrf))
    return response


def _users_page(request: Request, caller: Caller, status: int = 200, **context):
    from tempering.services import accounts

    with request.app.state.db.session(write=False) as s:
        users = [(u.id, u.username, u.name, u.is_admin, u.disabled, u.created_at) for u in accounts.users(s)]
    return page(request, caller, "users.html", status=status, users=users, **context)


@router.get("/users")
def users_page(request: Request, caller: PageCaller):
    return _users_page(request, caller)


@router.post("/users")
def create_user(request: Request, caller: PageCaller, username: Annotated[str, Form(max_length=200)],
                name: Annotated[str, Form(max_length=200)] = "", is_admin: Annotated[str, Form(max_length=8)] = ""):
    """A new user with a generated password, shown once; an Owner then adds them to a project."""
    from tempering.services import accounts

    try:
        with request.app.state.db.session() as s:
            _user, password = accounts.create_user(s, username.strip(), name=name.strip(), is_admin=is_admin == "on",
                                                   caller=caller)
    except TemperingError as exc:
        return _users_page(request, caller, status=status_of(exc), user_error=exc.message, typed_username=username,
                           typed_name=name)
    return _users_page(request, caller, new_password=password, new_user=username.strip())


@router.post("/users/{user_id}/reset-password")
def reset_password(request: Request, caller: PageCaller, user_id: str):
    """A new generated password, shown once; the user's portal sessions end."""
    from tempering.services import accounts

    try:
        with request.app.state.db.session() as s:
            user = accounts.get_user(s, user_id)
            password, name = accounts.reset_password(s, user, caller=caller), user.username
    except TemperingError as exc:
        return _users_page(request, caller, status=status_of(exc), error=exc.message)
    return _users_page(request, caller, new_password=password, new_user=name)


@router.post("/users/{user_id}")
def update_user(request: Request, caller: PageCaller, user_id: str, change: Annotated[str, Form(max_length=16)]):
    """``disable``, ``enable``, ``make-admin`` or ``unmake-admin`` (``services.accounts.update_user``: no one
    locks themselves out)."""
    from tempering.services import accounts

    fields = {"disable": {"disabled": True}, "enable": {"disabled": False}, "make-admin": {"is_admin": True},
              "unmake-admin": {"is_admin": False}}.get(change)
    _ = render.gettext_of(request, caller)
    if fields is None:
        return _users_page(request, caller, status=400, error=_("Unknown change."))
    try:
        with request.app.state.db.session() as s:
            user = accounts.update_user(s, accounts.get_user(s, user_id), caller, **fields)
            name = user.username
    except TemperingError as exc:
        return _users_page(request, caller, status=status_of(exc), error=exc.message)
    return _users_page(request, caller, notice=_("Changed %(name)s.", name=name))


def _categories_page(request: Request, caller: Caller, status: int = 200, **context):
    from tempering.services import files, safety_categories

    with request.app.state.db.session(write=False) as s:
        project_files = [(f.id, f.filename) for f in files.list_files(s, caller.project_id)] if caller.project_id \
            else []
    return page(request, caller, "categories.html", status=status, categories=safety_categories.categories(),
                project_files=project_files, **context)


@router.get("/categories")
def categories_page(request: Request, caller: PageCaller):
    return _categories_page(request, caller)


@router.post("/categories")
def train_category(request: Request, caller: PageCaller, name: Annotated[str, Form(max_length=64)],
                   training_file: Annotated[str, Form(max_length=64)]):
    """A custom category trained on a file of the current project (seconds for thousands of examples)."""
    from tempering.services import safety_categories

    _ = render.gettext_of(request, caller)
    state = request.app.state
    try:
        made = safety_categories.train(state.db, caller, state.store, name.strip(), training_file)
    except TemperingError as exc:
        return _categories_page(request, caller, status=status_of(exc), category_error=exc.message, typed_name=name)
    return _categories_page(request, caller, notice=_("Trained the category %(name)s.", name=made.name))


@router.post("/categories/{name}/delete")
def delete_category(request: Request, caller: PageCaller, name: str):
    from tempering.services import safety_categories

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            safety_categories.delete(s, caller, name, request.app.state.settings)
    except TemperingError as exc:
        return _categories_page(request, caller, status=status_of(exc), error=exc.message)
    return _categories_page(request, caller, notice=_("Deleted the category %(name)s.", name=name))
