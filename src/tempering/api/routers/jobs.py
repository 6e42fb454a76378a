"""``/v1/fine_tuning/jobs``: create (the one job config, validated up front), list, get, cancel, pause,
resume, events and checkpoints. The rules live in ``services.jobs``; nothing trains in a request."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol import CheckpointObject, FineTuningJob, JobCreate, JobEventObject, ListPage
from tempering.services import jobs as service
from tempering.store.models import Job

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=ERROR_RESPONSES)


def _limit(default: int):
    return Annotated[int, Query(description=f"Page size, default {default}; values outside 1 to 100 are clamped")]


def _after(kind: str):
    return Annotated[str | None, Query(description=f"The id of the last {kind} of the previous page")]


JobsAfter, EventsAfter, CheckpointsAfter = _after("job"), _after("event"), _after("checkpoint")
Limit20, Limit10 = _limit(20), _limit(10)


def to_wire(job: Job) -> FineTuningJob:
    hp = job.hyperparameters or dict(job.config.get("hyperparameters", {}))
    hp = {k: hp.get(k, "auto") for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    return FineTuningJob(
        id=job.id, created_at=job.created_at, finished_at=job.finished_at, model=job.model,
        fine_tuned_model=job.fine_tuned_model, organization_id=job.project_id, status=job.status,
        hyperparameters=hp, method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        training_file=job.training_file, validation_file=job.validation_file, result_files=job.result_files or [],
        trained_tokens=job.trained_tokens, error=job.error, seed=job.seed, suffix=job.suffix,
        metadata=job.user_metadata, estimated_finish=job.estimated_finish)


@router.post("", response_model=FineTuningJob)
def create_job(body: JobCreate, request: Request, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    job = service.create_job(session, caller.project_id, request.app.state.store, body.config_fields(),
                             training_file=body.training_file, validation_file=body.validation_file,
                             metadata=body.metadata)
    return to_wire(job)


@router.get("", response_model=ListPage[FineTuningJob])
def list_jobs(caller: CallerDep, session: SessionDep, after: JobsAfter = None, limit: Limit20 = 20):
    page = service.list_jobs(session, caller.project_id, after=after, limit=limit)
    return ListPage[FineTuningJob](data=[to_wire(j) for j in page.rows], has_more=page.has_more)


@router.get("/{job_id}", response_model=FineTuningJob)
def get_job(job_id: str, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    return to_wire(service.owned_job(session, caller.project_id, job_id))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(job_id: str, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    return to_wire(service.request_stop(session, service.owned_job(session, caller.project_id, job_id), "cancel"))


@router.post("/{job_id}/pause", response_model=FineTuningJob)
def pause_job(job_id: str, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    return to_wire(service.request_stop(session, service.owned_job(session, caller.project_id, job_id), "pause"))


@router.post("/{job_id}/resume", response_model=FineTuningJob)
def resume_job(job_id: str, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    return to_wire(service.resume_job(session, service.owned_job(session, caller.project_id, job_id)))


@router.get("/{job_id}/events", response_model=ListPage[JobEventObject])
def list_events(job_id: str, caller: CallerDep, session: SessionDep, after: EventsAfter = None,
                limit: Limit20 = 20):
    page = service.events(session, caller.project_id, job_id, after=after, limit=limit)
    data = [JobEventObject(id=e.id, created_at=e.created_at, level=e.level, message=e.message, type=e.type,
                           data=e.data) for e in page.rows]
    return ListPage[JobEventObject](data=data, has_more=page.has_more)


@router.get("/{job_id}/checkpoints", response_model=ListPage[CheckpointObject])
def list_checkpoints(job_id: str, caller: CallerDep, session: SessionDep, after: CheckpointsAfter = None,
                     limit: Limit10 = 10):
    page = service.checkpoints(session, caller.project_id, job_id, after=after, limit=limit)
    data = [CheckpointObject(id=c.id, created_at=c.created_at, fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
                             fine_tuning_job_id=job_id, metrics=c.metrics, step_number=c.step_number)
            for c in page.rows]
    return ListPage[CheckpointObject](data=data, has_more=page.has_more)
