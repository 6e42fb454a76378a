"""Queue operations on the ``jobs`` and ``evaluations`` tables: claim, heartbeat, release, request a stop.

Claimable: a job waiting (``validating_files`` or ``queued``; an evaluation: ``queued``) with no worker, or
one whose worker's lease has expired. Order: priority (jobs), then first come first served. Both tables
follow the same rules; ``table_of`` tells them apart by id (``ftjob-…``, ``eval-…``).

A job is claimable only within its project's quotas (``store.quotas.effective_quotas``): fewer than
``concurrent_jobs`` other jobs of the project held by live workers, and, for a job not started before, its
estimated trained tokens fitting what is left of the project's ``trained_tokens_per_day`` in the current UTC
day (the jobs first claimed that day count with their trained tokens, or their estimate until those are known;
failed jobs count nothing). The quotas are part of the one claim statement, so two workers never both take
the last slot: SQLite runs the claim under its write lock; PostgreSQL first locks the rows of the projects
involved, so concurrent claims for one project run one after the other and each counts what the other took.
The claim also tells each job it leaves waiting on a quota why (its project at ``concurrent_jobs``, or its
estimate past what is left of today's tokens), once per quota, as an event, in the claim's own transaction:
the claim that takes a project's last slot tells the project's other waiting jobs at once.
"""

from __future__ import annotations

import time

from sqlalchemy import and_, case, func, literal, or_, select, update
from sqlalchemy.orm import aliased

from tempering.store.db import Database
from tempering.store.models import Evaluation, Job, JobEvent, Project
from tempering.store.quotas import Quotas, effective_quotas

WAITING = ("validating_files", "queued")
ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
EVALUATION_WAITING = ("queued",)
EVALUATION_ACTIVE = ("queued", "running")
EVALUATION_PREFIX = "eval-"

Work = type[Job] | type[Evaluation]
DAY = 86400  # seconds: a quota day is a UTC calendar day


def table_of(work_id: str) -> Work:
    """The table a claimed id lives in."""
    return Evaluation if work_id.startswith(EVALUATION_PREFIX) else Job


def active_statuses(table: Work) -> tuple[str, ...]:
    return EVALUATION_ACTIVE if table is Evaluation else ACTIVE


def claim(db: Database, worker_id: str, lease_seconds: float, table: Work = Job) -> str | None:
    """Take the next job (or evaluation, with ``table=Evaluation``) for ``worker_id``, atomically; None when
    there is nothing to do (or every waiting job is over its project's quotas).

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
    values = {"worker_id": worker_id, "lease_expires_at": now + lease_seconds, "attempts": table.attempts + 1}
    with db.session() as session:
        if table is Job:
            quotas = _waiting_projects(session, claimable, lock=True)
            if not quotas:
                return None
            claimable = and_(claimable, _within_quotas(quotas, now))
            values |= {"claimed_at": func.coalesce(Job.claimed_at, int(now)), "quota_wait": None}
        candidate = (select(table.id).where(claimable).order_by(*order)
                     .limit(1).with_for_update(skip_locked=True).scalar_subquery())
        statement = (update(table).where(table.id == candidate, claimable).values(**values)
                     .returning(table.id).execution_options(synchronize_session=False))
        claimed = session.execute(statement).scalar_one_or_none()
        if table is Job:  # counted after the claim: the job it took holds its project's slot
            _tell(session, _quota_news(session, now, quotas))
        return claimed


def _waiting_projects(session, claimable, *, lock: bool = False) -> dict[str, Quotas]:
    """The quotas of every project with a claimable job. ``lock``: hold those projects' rows (PostgreSQL) until
    the transaction ends, so claims for one project are counted one after the other."""
    ids = sorted(set(session.scalars(select(Job.project_id).where(claimable).distinct())))
    if ids and lock and session.bind.dialect.name != "sqlite":  # SQLite: the claim holds the write lock already
        session.execute(select(Project.id).where(Project.id.in_(ids)).order_by(Project.id).with_for_update())
    return {project_id: effective_quotas(session, project_id) for project_id in ids}


def _per_project(quotas: dict[str, Quotas], name: str):
    """The quota ``name`` of the row's project, as an SQL expression."""
    return case({p: literal(getattr(q, name)) for p, q in quotas.items()}, value=Job.project_id, else_=literal(0))


def _held(other, now: float):
    return and_(other.worker_id.is_not(None), other.status.in_(ACTIVE), other.lease_expires_at >= now)


def _day_tokens(other):
    return func.coalesce(other.trained_tokens, other.estimated_tokens, 0)


def _within_quotas(quotas: dict[str, Quotas], now: float):
    """The claim's quota condition on a ``Job`` row: correlated counts of the other jobs of its project."""
    other = aliased(Job)
    same = and_(other.project_id == Job.project_id, other.id != Job.id)
    running = select(func.count(other.id)).where(same, _held(other, now)).scalar_subquery()
    day = int(now // DAY * DAY)
    used = (select(func.coalesce(func.sum(_day_tokens(other)), 0))
            .where(same, other.claimed_at >= day, other.status != "failed").scalar_subquery())
    started = Job.claimed_at.is_not(None)  # its tokens count against the day it started
    fits_today = used + func.coalesce(Job.estimated_tokens, 0) <= _per_project(quotas, "trained_tokens_per_day")
    return and_(running < _per_project(quotas, "concurrent_jobs"), or_(started, fits_today))


def quota_wait_reason(job: Job, quotas: Quotas, running: int, used_today: int) -> tuple[str, str] | None:
    """The quota that holds a waiting job back and why, in words (None: none does), given its project's jobs
    held by workers and trained tokens counted today."""
    if running >= quotas.concurrent_jobs:
        return "concurrent_jobs", (f"Waiting: the project runs {running} fine-tuning job(s) and its "
                                   f"concurrent_jobs quota is {quotas.concurrent_jobs}; this job starts when one ends")
    if job.claimed_at is None and job.estimated_tokens is not None \
            and used_today + job.estimated_tokens > quotas.trained_tokens_per_day:
        return "trained_tokens_per_day", (
            f"Waiting: the job trains about {job.estimated_tokens:,} tokens and the project has used {used_today:,} "
            f"of its trained_tokens_per_day quota of {quotas.trained_tokens_per_day:,} today (UTC); it starts "
            "when the day's quota has room, at the latest after 00:00 UTC")
    return None


def _quota_news(session, now: float, quotas: dict[str, Quotas]) -> dict[str, tuple[str, str]]:
    """What to tell the waiting jobs of the projects of ``quotas``: job id → (quota, message) for each held back
    by a quota other than the one it was last told. Three reads whatever the queue's length (the waiting jobs,
    then per project the jobs held and the day's tokens)."""
    mine = Job.project_id.in_(list(quotas))
    jobs = list(session.execute(select(Job.id, Job.project_id, Job.claimed_at, Job.estimated_tokens, Job.quota_wait)
                                .where(mine, Job.status.in_(WAITING), Job.worker_id.is_(None))))
    if not jobs:
        return {}
    running = dict(session.execute(select(Job.project_id, func.count(Job.id))
                                   .where(mine, _held(Job, now)).group_by(Job.project_id)).all())
    used = dict(session.execute(select(Job.project_id, func.sum(_day_tokens(Job)))
                                .where(mine, Job.claimed_at >= int(now // DAY * DAY), Job.status != "failed")
                                .group_by(Job.project_id)).all())
    news = {}
    for job in jobs:  # a waiting job is neither held nor (unclaimed) counted today: the sums are the others'
        reason = quota_wait_reason(job, quotas[job.project_id], running.get(job.project_id, 0),
                                   int(used.get(job.project_id) or 0))
        if reason is not None and reason[0] != job.quota_wait:
            news[job.id] = reason
    return news


def _tell(session, news: dict[str, tuple[str, str]]) -> None:
    """Record each waiting job's quota and tell it why, as an event (the job's ``quota_wait``, cleared when it
    is claimed, keeps it to once per quota)."""
    for job_id, (quota, message) in news.items():
        job = session.get(Job, job_id)
        if job is not None and job.worker_id is None and job.status in WAITING:
            job.quota_wait = quota
            session.add(JobEvent(job_id=job_id, level="info", message=message, type="message"))


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
