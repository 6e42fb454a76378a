"""``/v1/contentsafety/text/blocklists``: a project's custom blocklists in Azure AI Content Safety's shapes
(create or update, add or update items, list, get, remove items, delete). ``api-version`` is accepted and
ignored. The content filter applies the lists a deployment's policy names (docs/safety.md)."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request, Response

from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol_safety import (
    AddOrUpdateBlocklistItems,
    AddOrUpdateBlocklistItemsResult,
    RemoveBlocklistItems,
    TextBlocklist,
    TextBlocklistItem,
    TextBlocklistItemPage,
    TextBlocklistPage,
    TextBlocklistPatch,
)
from tempering.services import blocklists as service

router = APIRouter(prefix="/v1/contentsafety/text/blocklists", tags=["content safety"], responses=ERROR_RESPONSES)
Name = Path(pattern=r"^[0-9A-Za-z._~-]{1,64}$", description="The blocklist's name: 0-9 A-Z a-z . _ ~ -")


def _item(row) -> TextBlocklistItem:
    return TextBlocklistItem(blocklistItemId=row.id, text=row.text, isRegex=row.is_regex, description=row.description)


@router.patch("/{name}", response_model=TextBlocklist,
              responses={201: {"model": TextBlocklist, "description": "Created"}})
def create_or_update(body: TextBlocklistPatch, session: SessionDep, caller: CallerDep, response: Response,
                     name: str = Name) -> TextBlocklist:
    """Create a blocklist, or update its description (201 when created, 200 when updated)."""
    row, created = service.save(session, caller, name, body.description)
    response.status_code = 201 if created else 200
    return TextBlocklist(blocklistName=row.name, description=row.description)


@router.get("", response_model=TextBlocklistPage)
def list_blocklists(session: SessionDep, caller: CallerDep) -> TextBlocklistPage:
    return TextBlocklistPage(value=[TextBlocklist(blocklistName=r.name, description=r.description)
                                    for r in service.listing(session, caller)])


@router.get("/{name}", response_model=TextBlocklist)
def get_blocklist(session: SessionDep, caller: CallerDep, name: str = Name) -> TextBlocklist:
    row = service.get(session, caller, name)
    return TextBlocklist(blocklistName=row.name, description=row.description)


@router.delete("/{name}", status_code=204)
def delete_blocklist(request: Request, session: SessionDep, caller: CallerDep, name: str = Name) -> Response:
    service.delete(session, caller, name, request.app.state.settings)
    return Response(status_code=204)


@router.post("/{name}:addOrUpdateBlocklistItems", response_model=AddOrUpdateBlocklistItemsResult)
def add_items(body: AddOrUpdateBlocklistItems, session: SessionDep, caller: CallerDep,
              name: str = Name) -> AddOrUpdateBlocklistItemsResult:
    """Add terms or regular expressions (validated: compiles, at most 500 characters, no empty match); the
    same text again updates its description."""
    rows = service.add_items(session, caller, name, [i.model_dump() for i in body.blocklistItems])
    return AddOrUpdateBlocklistItemsResult(blocklistItems=[_item(r) for r in rows])


@router.post("/{name}:removeBlocklistItems", status_code=204)
def remove_items(body: RemoveBlocklistItems, session: SessionDep, caller: CallerDep, name: str = Name) -> Response:
    service.remove_items(session, caller, name, body.blocklistItemIds)
    return Response(status_code=204)


@router.get("/{name}/blocklistItems", response_model=TextBlocklistItemPage)
def list_items(session: SessionDep, caller: CallerDep, name: str = Name) -> TextBlocklistItemPage:
    return TextBlocklistItemPage(value=[_item(r) for r in service.items(session, caller, name)])
