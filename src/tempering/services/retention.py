"""Deleting a project: what goes and what stays.

Goes: the project's files (rows marked deleted, bytes removed from the artifact store once the deletion is
committed), its unfinished jobs and evaluations (cancelled; a running one stops at its next step), its runs
(the run folders: fine-tuned models and checkpoints), its deployments and its webhooks (pending deliveries
dropped). Stays: the project's row (``status="deleted"``, ``deleted_at``), its audit log, its usage ledger,
its members and keys (every key is refused from then on: ``access.caller_of_key`` answers 401 for a project
that is not active, and the project itself is 404), and the rows of jobs and deployments (their request log
outlives them). Nothing outside the project's files, jobs, runs, deployments and webhooks is touched.

A project whose deployments served a request in the last ``SERVING_WINDOW_SECONDS`` is refused (409) unless
forced: deleting it would cut off someone using it now.
"""

from __future__ import annotations

import shutil
import time

from sqlalchemy import event, select

from tempering.errors import ConflictError
from tempering.services import audit, webhooks
from tempering.services.deployments import live
from tempering.services.jobs import request_stop
from tempering.store import objects
from tempering.store.models import (
    Deployment,
    DeploymentRequest,
    Evaluation,
    File,
    Job,
    Project,
    Sweep,
    Webhook,
    now,
    run_id_of,
)

SERVING_WINDOW_SECONDS = 15 * 60
UNFINISHED = ("validating_files", "queued", "running", "paused")


def serving_deployments(session, project_id: str, window: float = SERVING_WINDOW_SECONDS) -> list[Deployment]:
    """The project's live deployments that answered a request in the last ``window`` seconds."""
    recent = select(DeploymentRequest.deployment_id).where(DeploymentRequest.created_at >= time.time() - window)
    return list(session.scalars(live(project_id).where(Deployment.id.in_(recent.distinct()))))


def delete_project(session, caller, project: Project, *, store, settings, force: bool = False) -> dict[str, int]:
    """Delete a project (see the module's docstring); what was removed, by kind."""
    busy = serving_deployments(session, project.id)
    if busy and not force:
        names = ", ".join(f"{d.name} ({d.id})" for d in busy[:5])
        raise ConflictError(f"the project's deployments served requests in the last "
                            f"{SERVING_WINDOW_SECONDS // 60} minutes: {names}; delete them first, or pass "
                            "force=true to delete the project anyway", param="force", code="project_in_use")
    # webhooks first: the cancellations below enqueue no event for a project that is going
    hooks = list(session.scalars(select(Webhook).where(Webhook.project_id == project.id,
                                                       Webhook.deleted_at.is_(None))))
    webhooks.drop(session, hooks)
    removed = {"webhooks": len(hooks), "deployments": 0, "jobs_cancelled": 0, "evaluations_cancelled": 0,
               "runs": 0, "files": 0}
    for deployment in session.scalars(live(project.id)):
        deployment.deleted_at = now()
        removed["deployments"] += 1
    removed["evaluations_cancelled"] = _cancel_evaluations(session, project.id)
    active = select(Sweep).where(Sweep.project_id == project.id, Sweep.status.in_(("queued", "running")))
    for sweep in session.scalars(active):
        sweep.status, sweep.finished_at = "cancelled", now()  # its trials are jobs: cancelled below
    runs = []
    for job in session.scalars(select(Job).where(Job.project_id == project.id)):
        if job.status in UNFINISHED:
            request_stop(session, job, "cancel")  # a job no worker holds is cancelled now, a running one stops
            removed["jobs_cancelled"] += 1
        job.fine_tuned_model = None
        runs.append(run_id_of(job.id))
    files = list(session.scalars(select(File).where(File.project_id == project.id, File.deleted.is_(False))))
    for row in files:
        row.deleted = True
    removed["files"], removed["runs"] = len(files), len(runs)
    project.status, project.deleted_at = "deleted", now()
    audit.record(session, "project.deleted", caller=caller, project_id=project.id, hub_id=project.hub_id,
                 target=project.id, forced=bool(busy) and force, **removed)
    file_ids = [row.id for row in files]
    # bytes and folders go once the deletion is committed: a failed commit keeps everything
    event.listen(session, "after_commit", lambda _: _remove(store, file_ids, settings.runs_dir, runs), once=True)
    return removed


def _cancel_evaluations(session, project_id: str) -> int:
    rows = list(session.scalars(select(Evaluation).where(Evaluation.project_id == project_id,
                                                         Evaluation.status.in_(("queued", "running")))))
    for row in rows:
        if row.status == "queued" and row.worker_id is None:
            row.status, row.finished_at = "cancelled", now()
        else:
            row.stop_requested = "cancel"
    return len(rows)


def _remove(store, file_ids: list[str], runs_dir, run_ids: list[str]) -> None:
    for file_id in file_ids:
        store.delete(file_id)
    for run_id in run_ids:
        shutil.rmtree(runs_dir / run_id, ignore_errors=True)
        objects.remove(runs_dir / run_id, folder=True)  # and from a shared artifact store
