"""A worker: claims jobs one at a time, runs each in a subprocess, and keeps its lease alive.

If the heartbeat finds the job is no longer ours (the lease expired and another worker took it over),
the subprocess is killed. A subprocess that dies without recording an outcome fails its job with an
internal error, unless the job was taken over. ``stop()`` ends the loop after the current job.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading

from tempering.jobs import queue
from tempering.store.db import Database
from tempering.store.models import Job, JobEvent, new_id, now

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, db: Database, *, lease_seconds: float = 30.0, poll_seconds: float = 0.5,
                 worker_id: str | None = None):
        self.db = db
        self.lease = lease_seconds
        self.poll = poll_seconds
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id('', 6)}"
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        while not self._stop.is_set():
            if not self.run_once():
                self._stop.wait(self.poll)

    def run_once(self) -> bool:
        """Claim and run one job; False when there was none."""
        job_id = queue.claim(self.db, self.id, self.lease)
        if job_id is None:
            return False
        log.info("worker %s runs %s", self.id, job_id)
        child = subprocess.Popen([sys.executable, "-m", "tempering.jobs.runner", job_id], env=os.environ.copy())
        ours = True
        while child.poll() is None:
            try:
                child.wait(timeout=self.lease / 3)
            except subprocess.TimeoutExpired:
                ours = queue.heartbeat(self.db, job_id, self.id, self.lease)
                if not ours:
                    log.warning("lost the lease on %s; stopping its process", job_id)
                    child.kill()
                    child.wait()
        job = queue.release(self.db, job_id, self.id) if ours else None
        if ours and job is not None and job.status in queue.ACTIVE:
            self._fail(job_id, f"the training process exited with code {child.returncode}")
        return True

    def _fail(self, job_id: str, message: str) -> None:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            job.status, job.finished_at = "failed", now()
            job.error = {"code": "internal_error", "message": message, "param": None}
            session.add(JobEvent(job_id=job_id, level="error", message=f"Job failed: {message}", type="message"))


def start_pool(db: Database, count: int, lease_seconds: float) -> list[tuple[Worker, threading.Thread]]:
    """``count`` workers on daemon threads (each runs its jobs in subprocesses)."""
    pool = []
    for _ in range(count):
        worker = Worker(db, lease_seconds=lease_seconds)
        thread = threading.Thread(target=worker.run_forever, name=f"worker-{worker.id}", daemon=True)
        thread.start()
        pool.append((worker, thread))
    return pool
