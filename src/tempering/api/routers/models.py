"""``/v1/models``: the catalog's base models (owned by "tempering") and this project's fine-tuned models."""

from __future__ import annotations

import shutil

from fastapi import APIRouter
from sqlalchemy import select

from tempering.api.deps import CallerDep, SessionDep
from tempering.api.errors import ERROR_RESPONSES, APIError, not_found
from tempering.api.protocol import ListPage, ModelDeleted, ModelObject
from tempering.store.models import Job

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)
BASE_OWNER = "tempering"
CATALOG_CREATED = 1_735_689_600  # the catalog's entries are fixed; a stable date keeps responses stable


def _fine_tuned(session, caller) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.project_id == caller.project_id,
                                                  Job.fine_tuned_model.is_not(None),
                                                  Job.status == "succeeded").order_by(Job.finished_at)))


def _models(session, caller) -> list[ModelObject]:
    from tempering.catalog import list_cards

    base = [ModelObject(id=c.id, created=CATALOG_CREATED, owned_by=BASE_OWNER) for c in list_cards()]
    tuned = [ModelObject(id=j.fine_tuned_model, created=j.finished_at or j.created_at, owned_by=caller.project_id)
             for j in _fine_tuned(session, caller)]
    return base + tuned


@router.get("", response_model=ListPage[ModelObject])
def list_models(caller: CallerDep, session: SessionDep) -> ListPage[ModelObject]:
    return ListPage[ModelObject](data=_models(session, caller))


@router.get("/{model_id:path}", response_model=ModelObject)
def get_model(model_id: str, caller: CallerDep, session: SessionDep) -> ModelObject:
    for model in _models(session, caller):
        if model.id == model_id:
            return model
    raise not_found("model", model_id, "model")


@router.delete("/{model_id:path}", response_model=ModelDeleted)
def delete_model(model_id: str, caller: CallerDep, session: SessionDep) -> ModelDeleted:
    from tempering.api.routers.deployments import deployments_of_model
    from tempering.errors import ModelNotFoundError
    from tempering.train import artifacts

    job = next((j for j in _fine_tuned(session, caller) if j.fine_tuned_model == model_id), None)
    serving = deployments_of_model(session, model_id) if job is not None else []
    if serving:
        names = ", ".join(f"{d.name} ({d.id})" for d in serving)
        raise APIError(409, f"{model_id} has {len(serving)} deployment(s): {names}; delete them first",
                       param="model", code="model_has_deployments")
    if job is None:
        if any(m.id == model_id for m in _models(session, caller)):
            raise APIError(403, f"{model_id} is a base model; only fine-tuned models can be deleted",
                           param="model", code="model_not_deletable")
        raise not_found("model", model_id, "model")
    try:
        folder, _ = artifacts.resolve_finetuned(model_id)
        shutil.rmtree(folder, ignore_errors=True)
    except ModelNotFoundError:  # its files are already gone: deleting it forgets the name
        pass
    job.fine_tuned_model = None
    return ModelDeleted(id=model_id)
