"""``/v1/fine_tuning/jobs``: create (the one job config, validated up front), list, get, cancel, pause,
resume, events and checkpoints. Nothing trains in a request: a worker claims the job."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from tempering.api.deps import CallerDep, SessionDep, owned_row
from tempering.api.errors import ERROR_RESPONSES, APIError, not_found
from tempering.api.protocol import CheckpointObject, FineTuningJob, JobCreate, JobEventObject, ListPage
from tempering.api.routers.files import owned_file
from tempering.store.models import Job, JobCheckpoint, JobEvent
from tempering.train.config import parse_config

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=ERROR_RESPONSES)
MAX_LIMIT = 100
_EVENT_ID = re.compile(r"ftevent-(\d{1,18})")  # a sequence number; 18 digits stay within a 64-bit integer


def _limit(default: int):
    return Annotated[int, Query(description=f"Page size, default {default}; values outside 1 to {MAX_LIMIT} "
                                "are clamped")]


def _after(kind: str):
    return Annotated[str | None, Query(description=f"The id of the last {kind} of the previous page")]


JobsAfter, EventsAfter, CheckpointsAfter = _after("job"), _after("event"), _after("checkpoint")
Limit20, Limit10 = _limit(20), _limit(10)


def to_wire(job: Job) -> FineTuningJob:
    hp = job.hyperparameters or {k: v for k, v in job.config.get("hyperparameters", {}).items()}
    hp = {k: hp.get(k, "auto") for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    return FineTuningJob(
        id=job.id, created_at=job.created_at, finished_at=job.finished_at, model=job.model,
        fine_tuned_model=job.fine_tuned_model, organization_id=job.project_id, status=job.status,
        hyperparameters=hp, method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        training_file=job.training_file, validation_file=job.validation_file, result_files=job.result_files or [],
        trained_tokens=job.trained_tokens, error=job.error, seed=job.seed, suffix=job.suffix,
        metadata=job.user_metadata, estimated_finish=job.estimated_finish)


def owned_job(session, caller, job_id: str) -> Job:
    return owned_row(session, Job, job_id, caller.project_id, "fine-tuning job", "fine_tuning_job_id")


def _model_exists(session, caller, model: str) -> None:
    from tempering.catalog import get_card

    if "\x00" in model:  # names no model; kept from the database
        raise not_found("model", model.replace("\x00", "\\x00"), "model")
    if model.startswith("ft:"):
        owned = session.scalars(select(Job).where(Job.project_id == caller.project_id,
                                                  Job.fine_tuned_model == model)).first()
        if owned is None:
            raise not_found("model", model, "model")
    else:
        get_card(model)  # ModelNotFoundError → 404 with the catalog listed


@router.post("", response_model=FineTuningJob)
def create_job(body: JobCreate, request: Request, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    import secrets

    store = request.app.state.store
    training = owned_file(session, caller.project_id, body.training_file, "training_file")
    validation = owned_file(session, caller.project_id, body.validation_file, "validation_file") \
        if body.validation_file else None
    for param, row in (("training_file", training), ("validation_file", validation)):
        if row is not None and (row.status != "processed" or row.purpose != "fine-tune"):
            raise APIError(400, f"file {row.id} cannot be used for fine-tuning (purpose {row.purpose}, status "
                           f"{row.status})", param=param, code="invalid_file")
    _model_exists(session, caller, body.model)
    hp = (body.method.supervised.hyperparameters if body.method else body.hyperparameters)
    hp_fields = hp.model_dump(exclude_none=True) if hp else {}
    config = {"model": body.model, "task": body.task, "suffix": body.suffix, "hyperparameters": hp_fields}
    if body.validation_fraction is not None:
        config["validation_fraction"] = body.validation_fraction
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    parse_config({**config, "seed": seed, "training_file": store.file_path(training.id),
                  "validation_file": store.file_path(validation.id) if validation else None})  # 400 on any error
    job = Job(project_id=caller.project_id, model=body.model, training_file=training.id,
              validation_file=validation.id if validation else None, suffix=body.suffix, seed=seed,
              config=config, user_metadata=body.metadata, status="validating_files")
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, level="info", message=f"Created fine-tuning job: {job.id}", type="message"))
    return to_wire(job)


@router.get("", response_model=ListPage[FineTuningJob])
def list_jobs(caller: CallerDep, session: SessionDep, after: JobsAfter = None, limit: Limit20 = 20):
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(Job).where(Job.project_id == caller.project_id)
    if after:
        anchor = owned_job(session, caller, after)
        query = query.where((Job.created_at < anchor.created_at) |
                            ((Job.created_at == anchor.created_at) & (Job.id < anchor.id)))
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    return ListPage[FineTuningJob](data=[to_wire(j) for j in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{job_id}", response_model=FineTuningJob)
def get_job(job_id: str, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    return to_wire(owned_job(session, caller, job_id))


def _request_stop(session, job: Job, kind: str) -> None:
    if job.status in ("succeeded", "failed", "cancelled"):
        raise APIError(400, f"job {job.id} already {job.status}", param="fine_tuning_job_id",
                       code="invalid_state")
    if (job.status in ("validating_files", "queued") and job.worker_id is None) or job.status == "paused":
        job.status = "cancelled" if kind == "cancel" else "paused"
        if kind == "cancel":
            from tempering.store.models import now

            job.finished_at = now()
    else:
        job.stop_requested = kind  # the runner stops at the next step and keeps a checkpoint
    session.add(JobEvent(job_id=job.id, level="info", message=f"{kind.capitalize()} requested", type="message"))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(job_id: str, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    job = owned_job(session, caller, job_id)
    _request_stop(session, job, "cancel")
    return to_wire(job)


@router.post("/{job_id}/pause", response_model=FineTuningJob)
def pause_job(job_id: str, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    job = owned_job(session, caller, job_id)
    if job.status == "paused":
        return to_wire(job)
    _request_stop(session, job, "pause")
    return to_wire(job)


@router.post("/{job_id}/resume", response_model=FineTuningJob)
def resume_job(job_id: str, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    job = owned_job(session, caller, job_id)
    if job.status != "paused":
        raise APIError(400, f"job {job.id} is {job.status}, not paused", param="fine_tuning_job_id",
                       code="invalid_state")
    job.status, job.stop_requested, job.worker_id = "queued", None, None
    session.add(JobEvent(job_id=job.id, level="info", message="Resume requested", type="message"))
    return to_wire(job)


@router.get("/{job_id}/events", response_model=ListPage[JobEventObject])
def list_events(job_id: str, caller: CallerDep, session: SessionDep, after: EventsAfter = None,
                limit: Limit20 = 20):
    owned_job(session, caller, job_id)
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after:
        match = _EVENT_ID.fullmatch(after)
        if match is None:
            raise APIError(400, f"after must be an event id (ftevent-<number>), got {after!r}", param="after",
                           code="invalid_value")
        query = query.where(JobEvent.seq < int(match.group(1)))
    rows = session.scalars(query.order_by(JobEvent.seq.desc()).limit(limit + 1)).all()
    data = [JobEventObject(id=e.id, created_at=e.created_at, level=e.level, message=e.message, type=e.type,
                           data=e.data) for e in rows[:limit]]
    return ListPage[JobEventObject](data=data, has_more=len(rows) > limit)


@router.get("/{job_id}/checkpoints", response_model=ListPage[CheckpointObject])
def list_checkpoints(job_id: str, caller: CallerDep, session: SessionDep, after: CheckpointsAfter = None,
                     limit: Limit10 = 10):
    owned_job(session, caller, job_id)
    rows = session.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
                           .order_by(JobCheckpoint.step_number.desc())).all()
    data = [CheckpointObject(id=c.id, created_at=c.created_at, fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
                             fine_tuning_job_id=job_id, metrics=c.metrics, step_number=c.step_number) for c in rows]
    if after:
        ids = [c.id for c in data]
        data = data[ids.index(after) + 1:] if after in ids else data
    limit = max(1, min(limit, MAX_LIMIT))
    return ListPage[CheckpointObject](data=data[:limit], has_more=len(data) > limit)
