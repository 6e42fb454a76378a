"""``/v1/fine_tuning/sweeps``: create (validated up front; its first trials start at once), list, get, cancel.
The rules and the driver live in ``services.sweeps``; nothing trains in a request."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol import ListPage
from tempering.api.protocol_sweeps import SweepCreate, SweepObject, SweepTrialObject
from tempering.services import sweeps as service
from tempering.store.models import Sweep

router = APIRouter(prefix="/v1/fine_tuning/sweeps", tags=["fine-tuning"], responses=ERROR_RESPONSES)


def to_wire(session, sweep: Sweep) -> SweepObject:
    trials = service.trials_of(session, sweep.id)
    jobs = service.trial_jobs(session, trials)
    wire = [SweepTrialObject(number=t.number, state=t.state, fine_tuning_job_id=t.job_id, parameters=t.params,
                             objective=t.value, intermediate_values=t.intermediate or {},
                             job_status=jobs[t.job_id].status if t.job_id in jobs else None,
                             fine_tuned_model=jobs[t.job_id].fine_tuned_model if t.job_id in jobs else None,
                             created_at=t.created_at, finished_at=t.finished_at) for t in trials]
    return SweepObject(id=sweep.id, created_at=sweep.created_at, finished_at=sweep.finished_at, model=sweep.model,
                       organization_id=sweep.project_id, status=sweep.status, training_file=sweep.training_file,
                       validation_file=sweep.validation_file, seed=sweep.seed, suffix=sweep.suffix,
                       n_trials=sweep.n_trials, max_concurrent_trials=sweep.max_concurrent_trials,
                       search_space=sweep.search_space, objective=sweep.objective, pruning=sweep.pruning,
                       trials=wire, best_trial=sweep.best_trial, fine_tuned_model=sweep.fine_tuned_model,
                       error=sweep.error, metadata=sweep.user_metadata)


@router.post("", response_model=SweepObject)
def create_sweep(body: SweepCreate, request: Request, caller: CallerDep, session: SessionDep) -> SweepObject:
    sweep = service.create_sweep(
        session, caller.project_id, request.app.state.store, body.config_fields(),
        training_file=body.training_file, validation_file=body.validation_file, n_trials=body.n_trials,
        max_concurrent_trials=body.max_concurrent_trials, search_space=body.search_space, objective=body.objective,
        pruning=body.pruning, initial_trials=body.initial_trials, metadata=body.metadata)
    return to_wire(session, sweep)


@router.get("", response_model=ListPage[SweepObject])
def list_sweeps(caller: CallerDep, session: SessionDep,
                after: Annotated[str | None, Query(description="The id of the last sweep of the previous page")] = None,
                limit: Annotated[int, Query(description="Page size, default 20; values outside 1 to 100 are "
                                                        "clamped")] = 20):
    page = service.list_sweeps(session, caller.project_id, after=after, limit=limit)
    return ListPage[SweepObject](data=[to_wire(session, s) for s in page.rows], has_more=page.has_more)


@router.get("/{sweep_id}", response_model=SweepObject)
def get_sweep(sweep_id: str, caller: CallerDep, session: SessionDep) -> SweepObject:
    return to_wire(session, service.owned_sweep(session, caller.project_id, sweep_id))


@router.post("/{sweep_id}/cancel", response_model=SweepObject)
def cancel_sweep(sweep_id: str, caller: CallerDep, session: SessionDep) -> SweepObject:
    sweep = service.cancel_sweep(session, service.owned_sweep(session, caller.project_id, sweep_id))
    return to_wire(session, sweep)
