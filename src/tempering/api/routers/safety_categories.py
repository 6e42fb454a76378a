"""``/v1/contentsafety/categories``: the content filter's categories (Tempering's own route): list them, and,
for a server administrator, train a custom category from a file of the project or delete one no policy names.
Parse, call ``services.safety_categories``, shape."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Path, Request, Response

from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol_safety import SafetyCategory, SafetyCategoryCreate, SafetyCategoryPage
from tempering.services import safety_categories as service

router = APIRouter(prefix="/v1/contentsafety/categories", tags=["content safety"], responses=ERROR_RESPONSES)


@router.get("", response_model=SafetyCategoryPage)
def list_categories(caller: CallerDep) -> SafetyCategoryPage:
    """Every category a policy may name: built in (harm, prompt attacks, profanity) and custom."""
    return SafetyCategoryPage(data=[SafetyCategory(**asdict(c)) for c in service.categories()])


@router.post("", response_model=SafetyCategory)
def create_category(body: SafetyCategoryCreate, request: Request, caller: CallerDep) -> SafetyCategory:
    """Train a custom category on a file of the project (server administrators; seconds for thousands of
    examples); policies of every project may name it at once."""
    state = request.app.state
    return SafetyCategory(**asdict(service.train(state.db, caller, state.store, body.name, body.training_file)))


@router.delete("/{name}", status_code=204)
def delete_category(request: Request, caller: CallerDep, session: SessionDep,
                    name: str = Path(pattern=r"^[a-z][a-z0-9_]{0,39}$")) -> Response:
    """Delete a custom category (server administrators); refused while a policy names it."""
    service.delete(session, caller, name, request.app.state.settings)
    return Response(status_code=204)
