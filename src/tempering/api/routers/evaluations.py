"""``/v1/evaluations``: evaluate a model (and a baseline) on an uploaded file, Tempering's own resource.

Create validates everything up front (the data file is this project's and usable, the models exist and are
this project's, the two can be compared) and queues the evaluation; a job worker claims and runs it, never
the request. List, get and cancel.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from tempering.api.deps import CallerDep, SessionDep, owned_row
from tempering.api.errors import ERROR_RESPONSES, APIError, is_id, not_found
from tempering.api.protocol import ListPage
from tempering.api.protocol_evaluations import EvaluationCreate, EvaluationObject
from tempering.api.routers.files import owned_file
from tempering.errors import ModelNotFoundError
from tempering.store.models import Evaluation, Job, now

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"], responses=ERROR_RESPONSES)
MAX_LIMIT = 100
DATA_PURPOSES = ("fine-tune", "evals")


def to_wire(row: Evaluation) -> EvaluationObject:
    return EvaluationObject(id=row.id, status=row.status, model=row.model, compare_model=row.compare_model,
                            data_file=row.data_file, options=row.options or {}, created_at=row.created_at,
                            started_at=row.started_at, finished_at=row.finished_at, report=row.report,
                            error=row.error)


def owned_evaluation(session, caller, evaluation_id: str) -> Evaluation:
    return owned_row(session, Evaluation, evaluation_id, caller.project_id, "evaluation", "evaluation_id")


def _owns_run(session, caller, name: str) -> bool:
    """Whether a fine-tuned id or checkpoint names a run of this project's (and, for a fine-tuned id, its
    model has not been deleted). Checked before anything touches the file system: the run part of the
    name becomes a path."""
    parts = name.split(":")
    if len(parts) < 4:
        return False
    run = parts[3].split("@", 1)[0]
    job = session.get(Job, f"ftjob-{run}") if is_id(run) else None  # letters, digits, "-", "_": no path
    if job is None or job.project_id != caller.project_id:
        return False
    if job.status == "succeeded" and job.fine_tuned_model is None:  # deleted, with its checkpoints
        return False
    return len(parts) > 4 or "@" in parts[3] or job.fine_tuned_model == name


def _target(session, caller, name: str, param: str):
    """The evaluation target ``name`` points at, if this project may use it; a 404 naming ``param``
    otherwise. Checkpoint folders named by path are the CLI's only: a caller must not probe server paths."""
    from tempering.catalog import get_card
    from tempering.train import refs as targets

    if "\x00" in name:
        raise not_found("model", name.replace("\x00", "\\x00"), param)
    if not name.startswith("ft:"):
        try:
            card = get_card(name)
        except ModelNotFoundError as exc:
            raise APIError(404, exc.message, param=param, code="model_not_found") from exc
        return targets.Target(card.id, "base", card.id)
    if not _owns_run(session, caller, name):
        raise not_found("model", name, param)
    try:
        return targets.resolve(name)
    except ModelNotFoundError as exc:  # its message names server paths
        raise not_found("model", name, param) from exc


def _data_file(session, caller, file_id: str, param: str = "data_file"):
    row = owned_file(session, caller.project_id, file_id, param)
    if row.status != "processed" or row.purpose not in DATA_PURPOSES:
        raise APIError(400, f"file {row.id} cannot be used (purpose {row.purpose}, status {row.status}; "
                       f"needs a processed file of purpose {' or '.join(DATA_PURPOSES)})", param=param,
                       code="invalid_file")
    return row


def _check_all(*checks) -> list:
    """Run every check; raise the first problem with all of the messages, so one answer names them all."""
    results, problems = [], []
    for check in checks:
        try:
            results.append(check())
        except APIError as exc:
            problems.append(exc)
            results.append(None)
    if problems:
        first = problems[0]
        raise APIError(first.status, "; ".join(p.message for p in problems), param=first.param, code=first.code)
    return results


@router.post("", response_model=EvaluationObject)
def create_evaluation(body: EvaluationCreate, caller: CallerDep, session: SessionDep) -> EvaluationObject:
    compare = body.compare_model if body.compare_model not in ("base", "none") else None
    data, candidate, baseline = _check_all(
        lambda: _data_file(session, caller, body.data_file),
        lambda: _target(session, caller, body.model, "model"),
        lambda: _target(session, caller, compare, "compare_model") if compare else None,
        lambda: _data_file(session, caller, body.train_file, "train_file") if body.train_file else None)[:3]
    if body.compare_model == "base" and candidate.kind != "base":
        baseline = _target(session, caller, candidate.base_model, "compare_model")
    if baseline is not None and baseline.task == "classification" and candidate.task != "classification":
        raise APIError(400, "a chat model cannot be compared against a classification model; swap them",
                       param="compare_model", code="invalid_value")
    row = Evaluation(project_id=caller.project_id, model=body.model, data_file=data.id,
                     compare_model=baseline.name if baseline is not None else None, options=body.options(),
                     status="queued")
    session.add(row)
    session.flush()
    return to_wire(row)


@router.get("", response_model=ListPage[EvaluationObject])
def list_evaluations(caller: CallerDep, session: SessionDep,
                     after: Annotated[str | None, Query(description="The id of the last evaluation of the "
                                                        "previous page")] = None,
                     limit: Annotated[int, Query(description=f"Page size, default 20; values outside 1 to "
                                                 f"{MAX_LIMIT} are clamped")] = 20) -> ListPage[EvaluationObject]:
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(Evaluation).where(Evaluation.project_id == caller.project_id)
    if after:
        anchor = owned_evaluation(session, caller, after)
        query = query.where((Evaluation.created_at < anchor.created_at) |
                            ((Evaluation.created_at == anchor.created_at) & (Evaluation.id < anchor.id)))
    rows = session.scalars(query.order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(limit + 1)).all()
    data = [to_wire(r) for r in rows[:limit]]
    return ListPage[EvaluationObject](data=data, has_more=len(rows) > limit,
                                      first_id=data[0].id if data else None, last_id=data[-1].id if data else None)


@router.get("/{evaluation_id}", response_model=EvaluationObject)
def get_evaluation(evaluation_id: str, caller: CallerDep, session: SessionDep) -> EvaluationObject:
    return to_wire(owned_evaluation(session, caller, evaluation_id))


@router.post("/{evaluation_id}/cancel", response_model=EvaluationObject)
def cancel_evaluation(evaluation_id: str, caller: CallerDep, session: SessionDep) -> EvaluationObject:
    """A waiting evaluation is cancelled at once; a running one when its worker next renews its lease (its
    process is stopped: an evaluation keeps nothing half-done)."""
    row = owned_evaluation(session, caller, evaluation_id)
    if row.status in ("succeeded", "failed", "cancelled"):
        raise APIError(400, f"evaluation {row.id} already {row.status}", param="evaluation_id", code="invalid_state")
    if row.status == "queued" and row.worker_id is None:
        row.status, row.finished_at = "cancelled", now()
    else:
        row.stop_requested = "cancel"
    return to_wire(row)
