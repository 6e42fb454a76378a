"""``/v1/models``: the catalog's base models (owned by "tempering") and this project's fine-tuned models;
deleting a fine-tuned model (refused while it is deployed). The rules live in ``services.models``."""

from __future__ import annotations

from fastapi import APIRouter

from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol import ListPage, ModelDeleted, ModelObject
from tempering.services import models as service

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


def to_wire(m: service.ModelEntry) -> ModelObject:
    return ModelObject(id=m.id, created=m.created, owned_by=m.owned_by)


@router.get("", response_model=ListPage[ModelObject])
def list_models(caller: CallerDep, session: SessionDep) -> ListPage[ModelObject]:
    return ListPage[ModelObject](data=[to_wire(m) for m in service.list_models(session, caller.project_id)])


@router.get("/{model_id:path}", response_model=ModelObject)
def get_model(model_id: str, caller: CallerDep, session: SessionDep) -> ModelObject:
    return to_wire(service.get_model(session, caller.project_id, model_id))


@router.delete("/{model_id:path}", response_model=ModelDeleted)
def delete_model(model_id: str, caller: CallerDep, session: SessionDep) -> ModelDeleted:
    service.delete_model(session, caller.project_id, model_id)
    return ModelDeleted(id=model_id)
