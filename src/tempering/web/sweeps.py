"""Sweeps in the portal: a sweep's page with its trials side by side (parameters, state, objective, the best
marked) and its cancel button; the jobs page lists the project's sweeps. Handlers call ``services.sweeps``, as
the API's routes do; sweeps are created through the API or ``tempering sweep``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tempering.errors import TemperingError
from tempering.services.access import Caller
from tempering.web import render, session
from tempering.web.render import page, redirect

router = APIRouter(include_in_schema=False, dependencies=[Depends(render.csrf_guard)])
PageCaller = Annotated[Caller, Depends(session.page_caller)]


def sweep_rows(s, project_id: str) -> list[dict]:
    """The jobs page's list entries: each sweep with its trials started and its best model."""
    from tempering.services import sweeps

    rows = []
    for sweep in sweeps.list_sweeps(s, project_id, after=None, limit=100).rows:
        started = len(sweeps.trials_of(s, sweep.id))
        rows.append({"id": sweep.id, "model": sweep.model, "status": sweep.status,
                     "trials": f"{started}/{sweep.n_trials}", "fine_tuned_model": sweep.fine_tuned_model or ""})
    return rows


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@router.get("/sweeps/{sweep_id}")
def sweep_page(request: Request, caller: PageCaller, sweep_id: str):
    from tempering.services import sweeps

    try:
        with request.app.state.db.session(write=False) as s:
            sweep = sweeps.owned_sweep(s, caller.project_id, sweep_id)
            trials = sweeps.trials_of(s, sweep.id)
            jobs = sweeps.trial_jobs(s, trials)
            s.expunge_all()
    except TemperingError as exc:
        raise session.PageForbidden(exc.message, 404) from None
    paths = [spec["path"] for spec in sweep.search_space]
    rows = [{"number": t.number, "state": t.state, "best": t.number == sweep.best_trial,
             "values": [_value(t.params.get(p, "")) for p in paths],
             "objective": "" if t.value is None else f"{t.value:.4f}",
             "curve": ", ".join(f"{v:.4f}" for v in (t.intermediate or {}).values()),
             "job_id": t.job_id, "model": getattr(jobs.get(t.job_id), "fine_tuned_model", None) or ""}
            for t in trials]
    return page(request, caller, "sweep.html", sweep=sweep, paths=paths, rows=rows,
                finished=sweep.status in sweeps.TERMINAL)


@router.post("/sweeps/{sweep_id}/cancel")
def cancel_sweep(request: Request, caller: PageCaller, sweep_id: str):
    from tempering.services import sweeps

    try:
        with request.app.state.db.session() as s:
            sweeps.cancel_sweep(s, sweeps.owned_sweep(s, caller.project_id, sweep_id))
    except TemperingError as exc:
        raise session.PageForbidden(exc.message, 409) from None
    return redirect(f"/sweeps/{sweep_id}")
