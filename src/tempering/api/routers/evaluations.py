"""``/v1/evaluations``: evaluate a model (and a baseline) on an uploaded file, Tempering's own resource.
Create (validated up front, queued for the job workers), list, get, cancel. The rules live in
``services.evaluations``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol import ListPage
from tempering.api.protocol_evaluations import EvaluationCreate, EvaluationObject
from tempering.services import evaluations as service
from tempering.store.models import Evaluation

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"], responses=ERROR_RESPONSES)
MAX_LIMIT = 100


def to_wire(row: Evaluation) -> EvaluationObject:
    return EvaluationObject(id=row.id, status=row.status, model=row.model, compare_model=row.compare_model,
                            data_file=row.data_file, options=row.options or {}, created_at=row.created_at,
                            started_at=row.started_at, finished_at=row.finished_at, report=row.report,
                            error=row.error)


@router.post("", response_model=EvaluationObject)
def create_evaluation(body: EvaluationCreate, caller: CallerDep, session: SessionDep) -> EvaluationObject:
    return to_wire(service.create_evaluation(session, caller.project_id, model=body.model, data_file=body.data_file,
                                             compare_model=body.compare_model, train_file=body.train_file,
                                             options=body.options()))


@router.get("", response_model=ListPage[EvaluationObject])
def list_evaluations(caller: CallerDep, session: SessionDep,
                     after: Annotated[str | None, Query(description="The id of the last evaluation of the "
                                                        "previous page")] = None,
                     limit: Annotated[int, Query(description=f"Page size, default 20; values outside 1 to "
                                                 f"{MAX_LIMIT} are clamped")] = 20) -> ListPage[EvaluationObject]:
    page = service.list_evaluations(session, caller.project_id, after=after, limit=limit)
    data = [to_wire(r) for r in page.rows]
    return ListPage[EvaluationObject](data=data, has_more=page.has_more,
                                      first_id=data[0].id if data else None, last_id=data[-1].id if data else None)


@router.get("/{evaluation_id}", response_model=EvaluationObject)
def get_evaluation(evaluation_id: str, caller: CallerDep, session: SessionDep) -> EvaluationObject:
    return to_wire(service.owned_evaluation(session, caller.project_id, evaluation_id))


@router.post("/{evaluation_id}/cancel", response_model=EvaluationObject)
def cancel_evaluation(evaluation_id: str, caller: CallerDep, session: SessionDep) -> EvaluationObject:
    """A waiting evaluation is cancelled at once; a running one when its worker next renews its lease (its
    process is stopped: an evaluation keeps nothing half-done)."""
    return to_wire(service.cancel_evaluation(session, caller.project_id, evaluation_id))
