"""Queue operations on the ``jobs`` table: claim, heartbeat, release, request a stop.

Claimable: a job waiting (``validating_files`` or ``queued``) with no worker, or one whose worker's lease
has expired. Order: priority, then first come first served.
"""

from __future__ import annotations

import time

from sqlalchemy import and_, or_, select, update

from tempering.store.db import Database
from tempering.store.models import Job

WAITING = ("validating_files", "queued")
ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")


def claim(db: Database, worker_id: str, lease_seconds: float) -> str | None:
    """Take the next job for ``worker_id``, atomically; None when there is nothing to do.

    One statement: the inner SELECT picks the candidate (skipping rows other claimers hold locked, on
    PostgreSQL) and the outer UPDATE re-checks that it is still claimable, so two workers never both win.
    """
    now = time.time()
    free = and_(Job.status.in_(WAITING), Job.worker_id.is_(None))
    abandoned = and_(Job.status.in_(ACTIVE), Job.worker_id.is_not(None), Job.lease_expires_at < now)
    claimable = or_(free, abandoned)
    candidate = (select(Job.id).where(claimable).order_by(Job.priority.desc(), Job.created_at, Job.id)
                 .limit(1).with_for_update(skip_locked=True).scalar_subquery())
    statement = (update(Job).where(Job.id == candidate, claimable)
                 .values(worker_id=worker_id, lease_expires_at=now + lease_seconds, attempts=Job.attempts + 1)
                 .returning(Job.id).execution_options(synchronize_session=False))
    with db.session() as session:
        return session.execute(statement).scalar_one_or_none()


def heartbeat(db: Database, job_id: str, worker_id: str, lease_seconds: float) -> bool:
    """Extend the lease; False when the job is no longer this worker's (taken over, or finished)."""
    with db.session() as session:
        result = session.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id)
                                 .values(lease_expires_at=time.time() + lease_seconds))
        return result.rowcount == 1


def release(db: Database, job_id: str, worker_id: str) -> Job | None:
    """Drop this worker's claim; returns the job as it is now."""
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is not None and job.worker_id == worker_id:
            job.worker_id = None
            job.lease_expires_at = None
        return job


def request_stop(db: Database, job_id: str, kind: str) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(stop_requested=kind))
