"""Fine-tuning jobs: build the one job config from a caller's choices, create the job (validated up front,
stored whole), list, get, cancel, pause, resume; their events and checkpoints. Nothing trains here: a worker
claims the job and its runner calls the same ``tune`` the CLI calls, with the config stored in ``Job.config``.

``job_config`` is the only place a job's config is built from a caller's choices: the API's job creation and
estimate, and the portal's wizard, call it; the command line builds the same ``TuneConfig`` from its options.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import select

from tempering.errors import InvalidStateError, TemperingError, not_found
from tempering.services import audit
from tempering.services._files import owned_file
from tempering.store import usage, webhooks
from tempering.store.models import File, Job, JobCheckpoint, JobEvent, now
from tempering.store.pages import Page, after_seq, clamp, newest_first
from tempering.store.quotas import effective_quotas
from tempering.train.config import TuneConfig, check_continuation, parse_config

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running", "paused")  # a job in these may still read its files
STORED_WITHOUT = {"training_file", "validation_file"}  # paths of this server: the rows hold the file ids


@dataclass(frozen=True)
class JobPlan:
    """A validated job config and the files it reads."""

    config: TuneConfig
    training: File
    validation: File | None


def usable_file(session, project_id: str, file_id: str, param: str) -> File:
    """A processed fine-tuning file of the project."""
    row = owned_file(session, project_id, file_id, param)
    if row.status != "processed" or row.purpose != "fine-tune":
        raise TemperingError(f"file {row.id} cannot be used for fine-tuning (purpose {row.purpose}, status "
                             f"{row.status})", param=param, code="invalid_file")
    return row


def check_model(session, project_id: str, model: str, task: str) -> None:
    """A catalog id, or a fine-tuned model of this project to continue training as its own ``task`` (its
    checkpoints are not a starting point); ``NotFoundError``/``ModelNotFoundError`` otherwise."""
    from tempering.services.models import owned_target

    target = owned_target(session, project_id, model)
    if target.kind == "checkpoint":
        raise TemperingError(f"{model} is a checkpoint; continue training from a fine-tuned model (deploy or "
                             "export the checkpoint instead)", param="model", code="invalid_value")
    if target.kind == "fine-tuned":
        check_continuation(model, target.task, task, target.base_model)


def job_config(session, project_id: str, store, fields: dict, *, training_file: str,
               validation_file: str | None = None) -> JobPlan:
    """The job config for the caller's ``fields`` (any ``TuneConfig`` field but the files) and file ids:
    every problem of the config at once, the files usable, the model this project's. A seed is drawn (and
    stored) when none is given."""
    training = usable_file(session, project_id, training_file, "training_file")
    validation = usable_file(session, project_id, validation_file, "validation_file") if validation_file else None
    config = parse_config({**fields, "seed": fields.get("seed") if fields.get("seed") is not None
                           else secrets.randbelow(2**31),
                           "training_file": store.file_path(training.id),
                           "validation_file": store.file_path(validation.id) if validation else None})
    check_model(session, project_id, config.model, config.task)
    return JobPlan(config, training, validation)


def stored_config(config: TuneConfig) -> dict:
    """The whole validated config as the job row keeps it (the files as ids, in their own columns)."""
    return config.model_dump(mode="json", exclude=STORED_WITHOUT)


def create_job(session, project_id: str, store, fields: dict, *, training_file: str,
               validation_file: str | None = None, metadata: dict | None = None,
               estimated_tokens: int | None = None) -> Job:
    """A queued job (status ``validating_files``) with its estimated trained tokens; refused when that
    estimate is more than a whole day of the project's ``trained_tokens_per_day`` quota (it could never
    start). A job that fits a day but not what is left of today waits in the queue (``jobs.queue``).
    ``estimated_tokens``: the estimate when the caller knows it already (a sweep's trial: its epochs × the
    sweep's tokens per epoch), so the data is not read again."""
    plan = job_config(session, project_id, store, fields, training_file=training_file,
                      validation_file=validation_file)
    config = plan.config
    tokens = estimated_tokens if estimated_tokens is not None else _estimated_tokens(store, plan)
    quota = effective_quotas(session, project_id).trained_tokens_per_day
    if tokens is not None and tokens > quota:
        raise TemperingError(f"the job would train about {tokens:,} tokens (tokens per epoch × epochs), more than "
                             f"the project's trained_tokens_per_day quota of {quota:,}, so it could never start; "
                             "train on less data or fewer epochs, or ask an Owner to raise the quota",
                             param="training_file", code="quota_exceeded")
    job = Job(project_id=project_id, model=config.model, training_file=plan.training.id,
              validation_file=plan.validation.id if plan.validation else None, suffix=config.suffix,
              seed=config.seed, config=stored_config(config), user_metadata=metadata, status="validating_files",
              estimated_tokens=tokens)
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, level="info", message=f"Created fine-tuning job: {job.id}", type="message"))
    audit.record(session, "job.created", project_id=project_id, target=job.id, model=job.model)
    return job


def _estimated_tokens(store, plan: JobPlan) -> int | None:
    """Tokens × epochs of a job about to be created, read as ``estimate`` reads them; None when the data
    cannot be read (the job then fails in ``validating_files`` naming every problem, as it always has)."""
    from tempering.services._files import named
    from tempering.train.estimate import estimate_job  # torch loads here

    paths = {store.file_path(row.id): row.filename for row in (plan.training, plan.validation) if row is not None}
    try:
        with named(paths):
            return estimate_job(plan.config).trained_tokens
    except Exception:  # noqa: BLE001 - whatever stops the estimate, the runner's checks report it in full
        return None


def estimate(session, project_id: str, store, fields: dict, *, training_file: str,
             validation_file: str | None = None):
    """Tokens × epochs, time and cost of the job these choices would create (nothing is created): the same
    config and checks as ``create_job``, then ``train.estimate.estimate_job`` (the same data loading and split
    as training; without a seed, seed 0 decides the split), priced by the project's table as the ledger is."""
    from tempering.services._files import named
    from tempering.train.estimate import estimate_job  # torch loads here

    plan = job_config(session, project_id, store, {**fields, "seed": fields.get("seed") or 0},
                      training_file=training_file, validation_file=validation_file)
    paths = {store.file_path(row.id): row.filename for row in (plan.training, plan.validation) if row is not None}
    with named(paths):
        return estimate_job(plan.config, usage.hub_settings(session, project_id))



def owned_job(session, project_id: str, job_id: str) -> Job:
    from tempering.store.models import looks_like_id

    job = session.get(Job, job_id) if looks_like_id(job_id) else None
    if job is None or job.project_id != project_id:
        raise not_found("fine-tuning job", job_id[:80], "fine_tuning_job_id")
    return job


def list_jobs(session, project_id: str, *, after: str | None, limit: int) -> Page:
    anchor = owned_job(session, project_id, after) if after else None
    return newest_first(session, select(Job).where(Job.project_id == project_id), Job, anchor, limit)


def request_stop(session, job: Job, kind: str) -> Job:
    """Cancel or pause: a job no worker holds changes at once; a running one stops at its next step and
    keeps a checkpoint."""
    if job.status in TERMINAL:
        raise InvalidStateError(f"job {job.id} already {job.status}", param="fine_tuning_job_id")
    if kind == "pause" and job.status == "paused":
        return job
    if (job.status in ("validating_files", "queued") and job.worker_id is None) or job.status == "paused":
        job.status = "cancelled" if kind == "cancel" else "paused"
        if kind == "cancel":
            job.finished_at = now()
            charge_cancelled(session, job)
            webhooks.job_finished(session, job)
    else:
        job.stop_requested = kind  # the runner stops at the next step and keeps a checkpoint
    session.add(JobEvent(job_id=job.id, level="info", message=f"{kind.capitalize()} requested", type="message"))
    audit.record(session, "job.cancelled" if kind == "cancel" else "job.paused", project_id=job.project_id,
                 target=job.id)
    return job


def charge_cancelled(session, job: Job, settings=None) -> None:
    """A job cancelled while no worker holds it (waiting, or paused) pays for the tokens it trained before
    (a paused job's, or one resumed and queued again); one that never trained pays nothing."""
    from tempering.train.artifacts import base_model_of

    tokens = usage.trained_so_far(session, job.id)
    if tokens:
        try:
            base = base_model_of(job.model)
        except (TemperingError, OSError, KeyError, ValueError):  # the parent model is gone: priced as named
            base = job.model
        usage.charge_training(session, job, base, tokens, settings)


def resume_job(session, job: Job) -> Job:
    if job.status != "paused":
        raise InvalidStateError(f"job {job.id} is {job.status}, not paused", param="fine_tuning_job_id")
    job.status, job.stop_requested, job.worker_id = "queued", None, None
    session.add(JobEvent(job_id=job.id, level="info", message="Resume requested", type="message"))
    audit.record(session, "job.resumed", project_id=job.project_id, target=job.id)
    return job


def events(session, project_id: str, job_id: str, *, after: str | None, limit: int) -> Page:
    owned_job(session, project_id, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    return after_seq(session, query, JobEvent.seq, after, "ftevent-", limit, "event", maximum=100, strict=True)


def checkpoints(session, project_id: str, job_id: str, *, after: str | None, limit: int) -> Page:
    owned_job(session, project_id, job_id)
    rows = list(session.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
                                .order_by(JobCheckpoint.step_number.desc())))
    ids = [c.id for c in rows]
    if after:
        rows = rows[ids.index(after) + 1:] if after in ids else rows
    limit = clamp(limit)
    return Page(rows[:limit], len(rows) > limit)


def jobs_reading(session, file_id: str) -> list[Job]:
    """Jobs not yet finished that will read the file."""
    return list(session.scalars(select(Job).where(Job.status.in_(ACTIVE),
                                                  (Job.training_file == file_id) | (Job.validation_file == file_id))))
