"""The project's content-filter blocklists in the portal: list and create them, a list's terms and regular
expressions (add, remove), its description, delete it. ``services.blocklists`` holds the rules (an item is
checked before it is stored; each change is audited), as for the API's ``/v1/contentsafety/text/blocklists``.
A deployment's policy names the lists it applies (the deployment's page)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from tempering.errors import TemperingError, status_of
from tempering.services.access import Caller
from tempering.web import render, session
from tempering.web.render import page, redirect

router = APIRouter(include_in_schema=False, dependencies=[Depends(render.csrf_guard)])
PageCaller = Annotated[Caller, Depends(session.page_caller)]


def _list_page(request: Request, caller: Caller, status: int = 200, **context):
    from tempering.services import blocklists

    with request.app.state.db.session(write=False) as s:
        counts = blocklists.item_counts(s, caller)
        rows = [(b.name, b.description, counts.get(b.name, 0)) for b in blocklists.listing(s, caller)]
    return page(request, caller, "blocklists.html", status=status, blocklists=rows, **context)


@router.get("/blocklists")
def blocklists_page(request: Request, caller: PageCaller):
    return _list_page(request, caller)


@router.post("/blocklists")
def create_blocklist(request: Request, caller: PageCaller, name: Annotated[str, Form(max_length=200)],
                     description: Annotated[str, Form(max_length=2000)] = ""):
    from tempering.services import blocklists

    try:
        with request.app.state.db.session() as s:
            row = blocklists.create(s, caller, name.strip(), description.strip())
            created = row.name
    except TemperingError as exc:
        return _list_page(request, caller, status=status_of(exc), create_error=exc.message, typed_name=name,
                          typed_description=description)
    return redirect(f"/blocklists/{created}")


def _blocklist_page(request: Request, caller: Caller, name: str, status: int = 200, **context):
    from tempering.services import blocklists

    try:
        with request.app.state.db.session(write=False) as s:
            row = blocklists.get(s, caller, name)
            description = row.description
            items = [(i.id, i.text, i.is_regex, i.description) for i in blocklists.items(s, caller, name)]
    except TemperingError as exc:
        return _list_page(request, caller, status=status_of(exc), error=exc.message)
    return page(request, caller, "blocklist.html", status=status, name=name, description=description, items=items,
                **context)


@router.get("/blocklists/{name}")
def blocklist_page(request: Request, caller: PageCaller, name: str):
    return _blocklist_page(request, caller, name)


@router.post("/blocklists/{name}")
def describe_blocklist(request: Request, caller: PageCaller, name: str,
                       description: Annotated[str, Form(max_length=2000)] = ""):
    from tempering.services import blocklists

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            blocklists.get(s, caller, name)  # describing is not creating: a missing list stays missing
            blocklists.save(s, caller, name, description.strip())
    except TemperingError as exc:
        return _blocklist_page(request, caller, name, status=status_of(exc), error=exc.message)
    return _blocklist_page(request, caller, name, notice=_("Saved the description."))


@router.post("/blocklists/{name}/items")
def add_item(request: Request, caller: PageCaller, name: str, text: Annotated[str, Form(max_length=2000)],
             is_regex: Annotated[str, Form(max_length=8)] = "",
             description: Annotated[str, Form(max_length=2000)] = ""):
    """A term (matched whole, ignoring case) or, with ``is_regex``, a regular expression."""
    from tempering.services import blocklists

    item = {"text": text, "isRegex": is_regex == "on", "description": description.strip()}
    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            blocklists.add_items(s, caller, name, [item])
    except TemperingError as exc:
        return _blocklist_page(request, caller, name, status=status_of(exc), item_error=exc.message, typed=item)
    return _blocklist_page(request, caller, name, notice=_("Added %(text)s.", text=text))


@router.post("/blocklists/{name}/items/{item_id}/remove")
def remove_item(request: Request, caller: PageCaller, name: str, item_id: str):
    from tempering.services import blocklists

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            blocklists.remove_items(s, caller, name, [item_id])
    except TemperingError as exc:
        return _blocklist_page(request, caller, name, status=status_of(exc), error=exc.message)
    return _blocklist_page(request, caller, name, notice=_("Removed the item."))


@router.post("/blocklists/{name}/delete")
def delete_blocklist(request: Request, caller: PageCaller, name: str):
    from tempering.services import blocklists

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            blocklists.delete(s, caller, name, request.app.state.settings)
    except TemperingError as exc:
        return _list_page(request, caller, status=status_of(exc), error=exc.message)
    return _list_page(request, caller, notice=_("Deleted the blocklist %(name)s.", name=name))
