"""Where a claimed job runs. A worker claims, heartbeats and fails jobs the same way whichever executor runs
them; an executor only starts the runner, reports its exit code and kills it.

- ``LocalProcessExecutor``: ``python -m tempering.jobs.runner JOB_ID`` in a subprocess that dies with the
  worker (the default, ``TEMPERING_EXECUTOR=local``).
- ``RayExecutor``: ``tempering.jobs.runner.run(JOB_ID)`` as a Ray task on the cluster at ``RAY_ADDRESS``
  (``TEMPERING_EXECUTOR=ray``), with CPU, GPU and memory requests derived from the model card and the job's
  config (``ray_options``). The runner writes status, events, checkpoints and artifacts to the same
  database and home itself, so nothing but an exit code comes back. See docs/ray.md.

An on-demand evaluation (``eval-…``) runs the same way: the runner hands its id to ``jobs.evaluation_runner``.

``ray`` is imported only when a ``RayExecutor`` starts its first job.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from tempering.settings import Settings, get_settings

log = logging.getLogger(__name__)

GIB = 1024**3
LARGE_MODEL_PARAMETERS = 1_000_000_000  # from here on, "auto" asks for a GPU when the cluster has one
PARAMETERS_PER_CPU = 500_000_000  # CPU training: one core per 500M parameters, 1 to MAX_CPUS
MAX_CPUS = 8
GPU_TASK_CPUS = 2  # tokenizing and batching beside a GPU
# environment the job's process needs besides TEMPERING_HOME and TEMPERING_DATABASE_URL (always passed);
# AWS_* configures a shared artifact store (TEMPERING_ARTIFACTS_URL=s3://…): endpoint, region and, unless the
# nodes have credentials of their own (an instance role), the keys, which then travel like the database URL
PASSED_PREFIXES = ("TEMPERING_", "HF_", "AWS_")
PASSED_NAMES = ("TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")
NOT_PASSED = ("TEMPERING_EXECUTOR", "TEMPERING_API_KEY", "TEMPERING_SERVER")
PARENT_PID = "TEMPERING_RUNNER_PARENT_PID"  # the worker that started a local runner (it checks it is alive)


class Executor(Protocol):
    def start(self, job_id: str, worker_id: str, lease_seconds: float) -> Any:
        """Start running the job; returns a handle."""

    def poll(self, handle: Any) -> int | None:
        """The exit code once the job's process has ended, else None."""

    def wait(self, handle: Any, timeout: float) -> int | None:
        """``poll``, after waiting up to ``timeout`` seconds for the end."""

    def kill(self, handle: Any) -> None:
        """Stop the job's process now (the worker lost its lease) and wait for it to go."""

    def describe(self, handle: Any, code: int) -> str:
        """Why a process that left its job unfinished ended, for the job's error message."""


class LocalProcessExecutor:
    """The runner in a subprocess of the worker (``die_with_parent``: a killed worker leaves no orphan)."""

    def start(self, job_id: str, worker_id: str, lease_seconds: float) -> subprocess.Popen:
        argv = [sys.executable, "-m", "tempering.jobs.runner", job_id]
        env = {**os.environ, PARENT_PID: str(os.getpid())}
        return subprocess.Popen(argv, env=env)  # noqa: S603 - fixed argv, no shell

    def poll(self, handle: subprocess.Popen) -> int | None:
        return handle.poll()

    def wait(self, handle: subprocess.Popen, timeout: float) -> int | None:
        try:
            return handle.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, handle: subprocess.Popen) -> None:
        handle.kill()
        handle.wait()

    def describe(self, handle: subprocess.Popen, code: int) -> str:
        from tempering.jobs.queue import EVALUATION_PREFIX

        what = "evaluation" if str(handle.args[-1]).startswith(EVALUATION_PREFIX) else "training"
        return f"the {what} process {exit_reason(code)}"


SIGNAL_REASONS = {signal.SIGKILL: "the system ran out of memory, or an operator killed it",
                  signal.SIGXFSZ: "a file grew past the process's file size limit",
                  signal.SIGSEGV: "a crash in native code", signal.SIGABRT: "a native library aborted"}


def exit_reason(code: int) -> str:
    """How a process ended, in words: "exited with code 1", "was killed by SIGKILL (… out of memory …)"."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        sig = signal.Signals(-code)
    except ValueError:
        return f"was killed by signal {-code}"
    reason = SIGNAL_REASONS.get(sig)
    return f"was killed by {sig.name}" + (f" ({reason})" if reason else "")


# --- Ray -------------------------------------------------------------------------------------------------


def ray_options(parameters: int | None, device: str, cluster_gpus: float, largest_node_cpus: float) -> dict:
    """Ray task resources for a job (the rule docs/ray.md states):

    - a GPU (``num_gpus=1``) when the config says ``device: cuda``, or when it says ``auto``, the cluster has
      a GPU and the model has at least 1B parameters; otherwise none (and the task sees no GPU);
    - CPUs: 2 beside a GPU; on CPU one per 500M parameters, 1 to 8, at most the largest node's count;
    - memory (host RAM, bytes): 1 GiB + 6 bytes per parameter on CPU (fp32 weights and room for
      activations), 1 GiB + 2 bytes per parameter with a GPU (bf16 weights pass through host memory once).

    ``parameters`` None (an unknown model: the runner will fail the job) asks for 1 CPU and nothing else.
    """
    if parameters is None:
        return {"num_cpus": 1, "num_gpus": 0}
    gpu = device == "cuda" or (device == "auto" and cluster_gpus > 0 and parameters >= LARGE_MODEL_PARAMETERS)
    if gpu:
        cpus, per_parameter = GPU_TASK_CPUS, 2
    else:
        cpus, per_parameter = min(MAX_CPUS, max(1, math.ceil(parameters / PARAMETERS_PER_CPU))), 6
    cpus = max(1, min(cpus, int(largest_node_cpus))) if largest_node_cpus else cpus
    return {"num_cpus": cpus, "num_gpus": 1 if gpu else 0, "memory": GIB + per_parameter * parameters}


def job_environment(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment a job needs wherever it runs: TEMPERING_* (the home and database resolved
    to what this worker uses), HF_* and a few library switches; never the executor choice or API keys."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items()
           if (k.upper().startswith(PASSED_PREFIXES) or k.upper() in PASSED_NAMES) and k.upper() not in NOT_PASSED}
    env["TEMPERING_HOME"] = str(settings.root)
    env["TEMPERING_DATABASE_URL"] = settings.database
    return env


def _watch_lease(job_id: str, worker_id: str, lease_seconds: float, done: threading.Event) -> None:
    """In the Ray task: exit when the job is no longer ``worker_id``'s (taken over after a crash, or
    released) or its lease expired long ago (three leases, at least 30 s: the worker died) — the Ray
    counterpart of the local subprocess dying with its worker, so a job never trains twice at once for long."""
    from tempering.jobs.queue import table_of
    from tempering.store.db import Database

    db = Database(get_settings().database)
    grace = max(3 * lease_seconds, 30.0)
    while not done.wait(max(0.5, min(5.0, lease_seconds / 3))):
        with db.session(write=False) as session:
            job = session.get(table_of(job_id), job_id)
            orphaned = job is None or job.worker_id != worker_id or \
                (job.lease_expires_at or 0) < time.time() - grace
        if orphaned and not done.is_set():
            log.error("job %s is no longer worker %s's; stopping its Ray task", job_id, worker_id)
            os._exit(3)


def run_in_ray_task(job_id: str, env: dict[str, str], worker_id: str, lease_seconds: float,
                    hide_gpus: bool) -> int:
    """The body of the Ray task (a fresh process per job: ``max_calls=1``)."""
    os.environ.update(env)
    if hide_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from tempering.settings import reset_settings

    reset_settings()
    from tempering.jobs.runner import run

    done = threading.Event()
    watchdog = threading.Thread(target=_watch_lease, args=(job_id, worker_id, lease_seconds, done), daemon=True)
    watchdog.start()
    try:
        return run(job_id)
    finally:
        done.set()


@dataclass
class RayHandle:
    job_id: str
    ref: Any
    options: dict
    code: int | None = None
    detail: str | None = field(default=None, repr=False)


_INIT_LOCK = threading.Lock()


class RayExecutor:
    """Each job as one Ray task (``max_retries=0``: the lease, not Ray, decides whether a job runs again)."""

    def __init__(self, address: str | None = None, task_options: dict | None = None):
        self.address = address
        self.task_options = dict(task_options or {})
        self._remote = None

    def _ray(self):
        import ray

        with _INIT_LOCK:
            if not ray.is_initialized():
                ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False)
            if self._remote is None:
                self._remote = ray.remote(max_retries=0, max_calls=1)(run_in_ray_task)
        return ray

    def options_for(self, job_id: str, settings: Settings) -> dict:
        ray = self._ray()
        parameters, device = _model_size_and_device(job_id, settings)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        largest_cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        options = ray_options(parameters, device, ray.cluster_resources().get("GPU", 0), largest_cpus)
        return {**options, **self.task_options}

    def start(self, job_id: str, worker_id: str, lease_seconds: float) -> RayHandle:
        settings = get_settings()
        options = self.options_for(job_id, settings)
        ref = self._remote.options(name=f"tempering-{job_id}", **options).remote(
            job_id, job_environment(settings), worker_id, lease_seconds, hide_gpus=not options.get("num_gpus"))
        log.info("job %s submitted to Ray with %s", job_id, options)
        return RayHandle(job_id, ref, options)

    def poll(self, handle: RayHandle) -> int | None:
        return self.wait(handle, 0)

    def wait(self, handle: RayHandle, timeout: float) -> int | None:
        if handle.code is not None:
            return handle.code
        ray = self._ray()
        ready, _ = ray.wait([handle.ref], timeout=timeout)
        if not ready:
            return None
        try:
            handle.code = int(ray.get(handle.ref))
        except ray.exceptions.TaskCancelledError:
            handle.code, handle.detail = -9, "the Ray task was cancelled"
        except ray.exceptions.RayError as exc:
            handle.code = 1
            handle.detail = f"the Ray task failed: {str(exc).strip().splitlines()[-1][:500]}"
        return handle.code

    def kill(self, handle: RayHandle) -> None:
        ray = self._ray()
        ray.cancel(handle.ref, force=True)
        self.wait(handle, 30)

    def describe(self, handle: RayHandle, code: int) -> str:
        return handle.detail or f"the Ray task's runner returned {code}"


def _model_size_and_device(job_id: str, settings: Settings) -> tuple[int | None, str]:
    """The job's (or evaluation's) base model's parameter count (None when it cannot be known here) and
    configured device."""
    from tempering.catalog import get_card
    from tempering.errors import TemperingError
    from tempering.jobs.queue import table_of
    from tempering.store.db import Database
    from tempering.train import artifacts, refs

    db = Database(settings.database)
    try:
        with db.session(write=False) as session:
            job = session.get(table_of(job_id), job_id)
            model, device = job.model, (getattr(job, "config", None) or {}).get("device", "auto")
    finally:
        db.dispose()
    try:
        # a checkpoint (<fine-tuned id>@step-N) sits on its fine-tuned model's base
        model = refs.without_checkpoint(model)
        return get_card(artifacts.base_model_of(model)).parameters, device
    except (TemperingError, OSError, KeyError, ValueError):
        return None, device


def make_executor(settings: Settings | None = None) -> Executor:
    """The executor ``settings.executor`` names."""
    settings = settings or get_settings()
    if settings.executor == "ray":
        return RayExecutor(settings.ray_address, settings.ray_task_options)
    return LocalProcessExecutor()
