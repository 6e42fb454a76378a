"""Runs one fine-tuning job in its own process: ``python -m tempering.jobs.runner JOB_ID``.

Stages follow OpenAI's statuses: ``validating_files`` (the data is checked with the model's tokenizer;
invalid data fails the job here and it never reaches ``running``), then ``running`` (the same ``tune``
the CLI runs, under the job's run id, so a job taken over after a crash resumes from its checkpoint).
Events and checkpoints go to the database as they happen; a cancel or pause request is polled between
steps. Whatever ends the run, the job ends ``failed`` with a reason the caller can act on: a domain error as
it is, and any other exception as ``out_of_memory``, ``disk_full`` or ``internal_error`` with its type and
message (the server's paths shown as ``TEMPERING_HOME``). An on-demand evaluation's id (``eval-…``) is handed
to ``jobs.evaluation_runner``, so every executor runs both the same way. Knows nothing about HTTP.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import signal
import sys
import time

from sqlalchemy import select

from tempering.errors import InvalidDataError, TemperingError
from tempering.jobs.executors import PARENT_PID
from tempering.settings import get_settings
from tempering.store import usage, webhooks
from tempering.store.artifacts import ArtifactStore
from tempering.store.db import Database
from tempering.store.models import File, Job, JobCheckpoint, JobEvent, new_id, now, run_id_of
from tempering.train import refs

log = logging.getLogger(__name__)
STOP_POLL_SECONDS = 1.0
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# libraries that write or allocate natively (safetensors, torch) raise their own types with the OS's words
DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded", "file too large", "os error 28")
OUT_OF_MEMORY_WORDS = ("can't allocate memory", "cannot allocate memory", "out of memory")


def die_with_parent() -> bool:
    """Linux: get SIGKILL when the worker that started us dies, so a killed worker leaves no orphan. False when
    the worker died before this was arranged (the signal would never come): the caller must not run the job,
    which another worker takes over once the lease expires."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return True
    parent = os.environ.get(PARENT_PID, "")
    return not parent.isdigit() or os.getppid() == int(parent)


def failure(exc: BaseException, shown: dict[str, str]) -> dict:
    """The error of a job (or evaluation) for an exception that is not a domain error: what ran out, and the
    exception itself with each server path in ``shown`` replaced by what the caller may see."""
    message = f"{type(exc).__name__}: {exc}"
    for secret, public in shown.items():
        message = message.replace(secret, public)
    message = message[:2000]
    words = str(exc).lower()
    if isinstance(exc, MemoryError) or any(w in words for w in OUT_OF_MEMORY_WORDS):
        return {"code": "out_of_memory", "message": f"the job ran out of memory ({message}); use a smaller "
                "batch_size or a shorter context, or give the worker more memory", "param": None}
    if (isinstance(exc, OSError) and exc.errno in DISK_FULL) or any(w in words for w in DISK_FULL_WORDS):
        return {"code": "disk_full", "message": f"the server's disk is full ({message}); free space, then "
                "create the job again", "param": None}
    return {"code": "internal_error", "message": message, "param": None}


def tune_config(job: Job, store: ArtifactStore):
    """The stored job's config; an option it was stored without (added since) reads as before it existed."""
    from tempering.train.config import BEFORE_OPTION, parse_config

    files = {"training_file": store.file_path(job.training_file)}
    if job.validation_file:
        files["validation_file"] = store.file_path(job.validation_file)
    return parse_config({**BEFORE_OPTION, **job.config, **files, "seed": job.seed})


class JobRecorder:
    """Turns the recipe's events into job events and checkpoint rows."""

    def __init__(self, db: Database, job_id: str, model_id: str):
        self.db, self.job_id, self.model_id = db, job_id, model_id

    def event(self, message: str, *, level: str = "info", type: str = "message", data: dict | None = None):
        with self.db.session() as session:
            session.add(JobEvent(job_id=self.job_id, level=level, message=message, type=type, data=data))

    def __call__(self, event: dict) -> None:
        data = event["data"]
        kind = "metrics" if event["type"] == "metrics" else "message"
        self.event(event["message"], level=event["level"], type=kind, data=data if data else None)
        if event["type"] == "epoch":
            metrics = {k: v for k, v in data.items()  # numbers only: not the selection's flags or names
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
            with self.db.session() as session:
                session.add(JobCheckpoint(job_id=self.job_id, step_number=data["step"], metrics=metrics,
                                          fine_tuned_model_checkpoint=refs.api_checkpoint_id(
                                              self.model_id, data["step"])))
        if event["type"] == "resumed":
            self._forget_steps_after(data["step"])
        if event["type"] == "started":
            with self.db.session() as session:
                job = session.get(Job, self.job_id)
                job.status, job.started_at = "running", job.started_at or now()


    def _forget_steps_after(self, step: int) -> None:
        """A resumed run redoes the steps after its checkpoint: drop their first metrics so each step is
        reported once (as the run's results.csv is)."""
        with self.db.session() as session:
            rows = session.scalars(select(JobEvent).where(JobEvent.job_id == self.job_id, JobEvent.type == "metrics"))
            for row in rows:
                if (row.data or {}).get("step", 0) > step:
                    session.delete(row)


def _stop_poller(db: Database, job_id: str):
    last, answer = 0.0, False

    def should_stop() -> bool:
        nonlocal last, answer
        if time.monotonic() - last >= STOP_POLL_SECONDS:
            last = time.monotonic()
            with db.session(write=False) as session:
                answer = session.get(Job, job_id).stop_requested is not None
        return answer

    return should_stop


def _finish(db: Database, job_id: str, *, charge: str | None = None, **fields) -> None:
    """Set the job's fields; with ``charge`` (its base model) and a status of ``succeeded`` (its
    ``trained_tokens``) or ``cancelled`` (what it trained so far), the usage ledger's row goes in the same
    transaction. A failed job is never charged."""
    with db.session() as session:
        job = session.get(Job, job_id)
        for key, value in fields.items():
            setattr(job, key, value)
        if fields.get("status") in ("succeeded", "failed", "cancelled"):
            job.finished_at = now()
            webhooks.job_finished(session, job)  # committed with the final state, or not at all
        if charge is not None and job.status in ("succeeded", "cancelled"):
            tokens = job.trained_tokens if job.status == "succeeded" else usage.trained_so_far(session, job_id)
            usage.charge_training(session, job, charge, tokens or 0)


def _validate(job: Job, config, base: str, recorder: JobRecorder) -> None:
    from tempering.catalog import get_card, load_tokenizer
    from tempering.train.jobdata import validate_job_files

    card = get_card(base)
    validate_job_files(config, load_tokenizer(card), card.context_length)
    recorder.event("Files validated", data={"training_file": job.training_file})


def run(job_id: str) -> int:
    from tempering.jobs.queue import EVALUATION_PREFIX

    if job_id.startswith(EVALUATION_PREFIX):
        from tempering.jobs.evaluation_runner import run as run_evaluation

        return run_evaluation(job_id)
    from tempering.evaluate.job import tune_and_evaluate
    from tempering.train import artifacts
    from tempering.train.fit import RunCancelled

    settings = get_settings()
    db = Database(settings.database)
    store = ArtifactStore(settings.artifacts_dir)
    with db.session(write=False) as session:
        job = session.get(Job, job_id)
    run_id = run_id_of(job.id)
    recorder = JobRecorder(db, job_id, "")
    base = None
    try:
        config = tune_config(job, store)
        base = artifacts.base_model_of(job.model)
        recorder.model_id = artifacts.model_id_for(base, job.suffix, run_id)
        if job.status == "validating_files":
            _validate(job, config, base, recorder)
            _finish(db, job_id, status="queued")
        result = tune_and_evaluate(config, on_event=recorder, should_stop=_stop_poller(db, job_id), run_id=run_id)
    except RunCancelled as exc:
        with db.session(write=False) as session:
            kind = session.get(Job, job_id).stop_requested
        status = "paused" if kind == "pause" else "cancelled"
        recorder.event(f"Job {status}: {exc.message}", level="warning")
        _finish(db, job_id, status=status, stop_requested=None, charge=base)
        return 0
    except TemperingError as exc:
        param = exc.param or ("training_file" if isinstance(exc, InvalidDataError) else None)
        code = "invalid_training_file" if isinstance(exc, InvalidDataError) else exc.code
        recorder.event(f"Job failed: {exc.message}", level="error")
        _finish(db, job_id, status="failed", error={"code": code, "message": exc.message, "param": param})
        return 0
    except Exception as exc:  # a bug, memory or disk: the job fails saying which, not "exited with code 1"
        log.exception("job %s failed", job_id)
        error = failure(exc, {str(settings.root): "TEMPERING_HOME"})
        recorder.event(f"Job failed: {error['message']}", level="error")
        _finish(db, job_id, status="failed", error=error)
        return 0
    results = store.root / "files"
    result_file = new_id("file-")
    csv_bytes = (artifacts.run_dir(run_id) / "results.csv").read_bytes()
    (results / result_file).write_bytes(csv_bytes)
    store.publish(result_file)
    with db.session() as session:
        session.add(File(id=result_file, project_id=job.project_id, filename="step_metrics.csv",
                         purpose="fine-tune-results", bytes=len(csv_bytes),
                         sha256=hashlib.sha256(csv_bytes).hexdigest(), status="processed"))
    _finish(db, job_id, status="succeeded", fine_tuned_model=result.model_id, trained_tokens=result.trained_tokens,
            result_files=[result_file], hyperparameters=result.hyperparameters.model_dump(), charge=result.base_model)
    recorder.event("The job has successfully completed")
    return 0


if __name__ == "__main__":
    if not die_with_parent():
        print(f"the worker that started the runner of {sys.argv[1]} is gone; not running it", file=sys.stderr)
        sys.exit(3)
    sys.exit(run(sys.argv[1]))
