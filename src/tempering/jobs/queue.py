"""Queue operations on the ``jobs`` and ``evaluations`` tables: claim, heartbeat, release, request a stop.

Claimable: a job waiting (``validating_files`` or ``queued``; an evaluation: ``queued``) with no worker, or
one whose worker's lease has expired. Order: priority (jobs), then first come first served. Both tables
follow the same rules; ``table_of`` tells them apart by id (``ftjob-…``, ``eval-…``).
"""

from __future__ import annotations

import time

from sqlalchemy import and_, or_, select, update

from tempering.store.db import Database
from tempering.store.models import Evaluation, Job

WAITING = ("validating_files", "queued")
ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
EVALUATION_WAITING = ("queued",)
EVALUATION_ACTIVE = ("queued", "running")
EVALUATION_PREFIX = "eval-"

Work = type[Job] | type[Evaluation]


def table_of(work_id: str) -> Work:
    """The table a claimed id lives in."""
    return Evaluation if work_id.startswith(EVALUATION_PREFIX) else Job


def active_statuses(table: Work) -> tuple[str, ...]:
    return EVALUATION_ACTIVE if table is Evaluation else ACTIVE


def claim(db: Database, worker_id: str, lease_seconds: float, table: Work = Job) -> str | None:
    """Take the next job (or evaluation, with ``table=Evaluation``) for ``worker_id``, atomically; None when
    there is nothing to do.

    One statement: the inner SELECT picks the candidate (skipping rows other claimers hold locked, on
    PostgreSQL) and the outer UPDATE re-checks that it is still claimable, so two workers never both win.
    """
    now = time.time()
    waiting = EVALUATION_WAITING if table is Evaluation else WAITING
    free = and_(table.status.in_(waiting), table.worker_id.is_(None))
    abandoned = and_(table.status.in_(active_statuses(table)), table.worker_id.is_not(None),
                     table.lease_expires_at < now)
    claimable = or_(free, abandoned)
    order = (table.created_at, table.id) if table is Evaluation else (Job.priority.desc(), Job.created_at, Job.id)
    candidate = (select(table.id).where(claimable).order_by(*order)
                 .limit(1).with_for_update(skip_locked=True).scalar_subquery())
    statement = (update(table).where(table.id == candidate, claimable)
                 .values(worker_id=worker_id, lease_expires_at=now + lease_seconds, attempts=table.attempts + 1)
                 .returning(table.id).execution_options(synchronize_session=False))
    with db.session() as session:
        return session.execute(statement).scalar_one_or_none()


def heartbeat(db: Database, job_id: str, worker_id: str, lease_seconds: float) -> bool:
    """Extend the lease; False when the job is no longer this worker's (taken over, or finished)."""
    table = table_of(job_id)
    with db.session() as session:
        result = session.execute(update(table).where(table.id == job_id, table.worker_id == worker_id)
                                 .values(lease_expires_at=time.time() + lease_seconds))
        return result.rowcount == 1


def release(db: Database, job_id: str, worker_id: str) -> Job | Evaluation | None:
    """Drop this worker's claim; returns the job (or evaluation) as it is now."""
    with db.session() as session:
        job = session.get(table_of(job_id), job_id)
        if job is not None and job.worker_id == worker_id:
            job.worker_id = None
            job.lease_expires_at = None
        return job


def stop_requested(db: Database, job_id: str) -> str | None:
    """The stop the job or evaluation was asked for ("cancel", "pause"), if any."""
    with db.session(write=False) as session:
        row = session.get(table_of(job_id), job_id)
        return row.stop_requested if row is not None else None


def request_stop(db: Database, job_id: str, kind: str) -> None:
    table = table_of(job_id)
    with db.session() as session:
        session.execute(update(table).where(table.id == job_id).values(stop_requested=kind))
