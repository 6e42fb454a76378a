"""A worker: claims jobs and on-demand evaluations one at a time, runs each through an executor, and keeps
its lease alive. With both kinds waiting it alternates between them, so neither starves the other.

The executor (``jobs.executors``, picked by ``TEMPERING_EXECUTOR``) is a subprocess beside the worker or a
Ray task; claiming, heartbeats and failing are the same for both. If the heartbeat finds the job is no
longer ours (the lease expired and another worker took it over), the job's process is killed. A process
that ends without recording an outcome fails its job with an internal error, unless the job was taken
over. A cancelled evaluation's process is killed at the next heartbeat (a job stops itself between steps).
``stop()`` ends the loop after the current job.

``between_jobs`` (a function of the database) is what the worker does besides running jobs: the API and
``tempering worker`` pass ``services.sweeps.advance_sweeps``, so sweeps are advanced by whichever workers are
alive — while they wait for work, between the heartbeats of the job they run, and after each job. It is called
at most once per ``poll`` seconds, and its errors are logged, never fatal to the worker. (This layer cannot
import services; the edges hand the function in.)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from tempering.jobs import queue
from tempering.jobs.executors import Executor, make_executor
from tempering.store import objects, webhooks
from tempering.store.db import Database
from tempering.store.models import Evaluation, Job, JobEvent, Project, new_id, now, run_id_of

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, db: Database, *, lease_seconds: float = 30.0, poll_seconds: float = 0.5,
                 worker_id: str | None = None, executor: Executor | None = None,
                 between_jobs: Callable[[Database], object] | None = None):
        self.db = db
        self.between_jobs = between_jobs
        self._last_between = 0.0
        self.executor = executor or make_executor()
        self.lease = lease_seconds
        self.poll = poll_seconds
        # at most 40 + 1 + 7 + 1 + 6 characters: jobs.worker_id is VARCHAR(64), which PostgreSQL enforces
        self.id = worker_id or f"{socket.gethostname()[:40]}-{os.getpid()}-{new_id('', 6)}"
        self._stop = threading.Event()
        self._jobs_first = True

    def stop(self) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        while not self._stop.is_set():
            if not self.run_once():
                self.tick()
                self._stop.wait(self.poll)

    def tick(self) -> None:
        """Run ``between_jobs`` unless it ran less than ``poll`` seconds ago."""
        if self.between_jobs is None or time.monotonic() - self._last_between < self.poll:
            return
        self._last_between = time.monotonic()
        try:
            self.between_jobs(self.db)
        except Exception:  # the worker's own work goes on
            log.exception("worker %s: between-jobs work failed", self.id)

    def _claim(self) -> str | None:
        for table in (Job, Evaluation) if self._jobs_first else (Evaluation, Job):
            if (work_id := queue.claim(self.db, self.id, self.lease, table)) is not None:
                self._jobs_first = table is Evaluation  # the other kind goes first next time
                return work_id
        return None  # jobs left waiting by their project's quotas were told why by the claim

    def run_once(self) -> bool:
        """Claim and run one job or evaluation; False when there was none."""
        job_id = self._claim()
        if job_id is None:
            return False
        log.info("worker %s runs %s", self.id, job_id)
        try:
            handle = self.executor.start(job_id, self.id, self.lease)
        except Exception as exc:  # the cluster is unreachable, …: fail the job rather than retry it forever
            log.exception("could not start %s", job_id)
            if queue.release(self.db, job_id, self.id) is not None:
                self._fail(job_id, f"the job could not be started: {exc}")
            return True
        ours, cancelled = True, False
        evaluation = queue.table_of(job_id) is Evaluation
        while (code := self.executor.wait(handle, self.lease / 3)) is None:
            ours = queue.heartbeat(self.db, job_id, self.id, self.lease)
            self.tick()
            if not ours:
                log.warning("lost the lease on %s; stopping its process", job_id)
                self.executor.kill(handle)
                break
            if evaluation and queue.stop_requested(self.db, job_id) == "cancel":
                self.executor.kill(handle)  # an evaluation writes nothing but its row: stopping it is safe
                cancelled = True
                break
        job = queue.release(self.db, job_id, self.id) if ours else None
        # a job taken over just as its process ended (a Ray task stops itself then) is not ours to fail
        if ours and job is not None and job.worker_id is None and job.status in queue.active_statuses(type(job)):
            if cancelled:
                self._finish_evaluation(job_id, "cancelled")
            else:
                self._fail(job_id, self.executor.describe(handle, code))
        if job is not None and not evaluation:
            remove_run_of_deleted_project(self.db, job)
        self._last_between = 0.0  # a job ended: its sweep, if any, moves on now
        self.tick()
        return True

    def _finish_evaluation(self, evaluation_id: str, status: str, error: dict | None = None) -> None:
        with self.db.session() as session:
            row = session.get(Evaluation, evaluation_id)
            if row.status in queue.EVALUATION_ACTIVE:  # its runner may have finished it meanwhile
                row.status, row.finished_at, row.error = status, now(), error
                webhooks.evaluation_finished(session, row)

    def _fail(self, job_id: str, message: str) -> None:
        if queue.table_of(job_id) is Evaluation:
            self._finish_evaluation(job_id, "failed", {"code": "internal_error", "message": message, "param": None})
            return
        with self.db.session() as session:
            job = session.get(Job, job_id)
            job.status, job.finished_at = "failed", now()
            job.error = {"code": "internal_error", "message": message, "param": None}
            webhooks.job_finished(session, job)
            session.add(JobEvent(job_id=job_id, level="error", message=f"Job failed: {message}", type="message"))


def remove_run_of_deleted_project(db: Database, job: Job) -> None:
    """A job whose project was deleted while it ran: the checkpoint its runner kept on the way out goes too."""
    import shutil

    from tempering.train.artifacts import run_dir

    with db.session(write=False) as session:
        project = session.get(Project, job.project_id)
    if project is not None and project.status == "deleted":
        shutil.rmtree(run_dir(run_id_of(job.id)), ignore_errors=True)
        objects.remove(run_dir(run_id_of(job.id)), folder=True)  # and from a shared artifact store


def start_pool(db: Database, count: int, lease_seconds: float, executor: Executor | None = None,
               between_jobs: Callable[[Database], object] | None = None) -> list[tuple[Worker, threading.Thread]]:
    """``count`` workers on daemon threads sharing one executor (default: the one the settings name)."""
    pool = []
    executor = executor or make_executor()
    for _ in range(count):
        worker = Worker(db, lease_seconds=lease_seconds, executor=executor, between_jobs=between_jobs)
        thread = threading.Thread(target=worker.run_forever, name=f"worker-{worker.id}", daemon=True)
        thread.start()
        pool.append((worker, thread))
    return pool
