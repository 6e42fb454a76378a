"""The Ray executor: a worker claims a job and runs it as a task on a local Ray instance started here; the
task's runner writes status, events, checkpoints and artifacts to the same database and home; a cancel
request and a lost lease both reach the task. Plus the resource rule, which needs no Ray."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import chat_example

from tempering.jobs import queue
from tempering.jobs.executors import GIB, job_environment, ray_options
from tempering.settings import Settings, get_settings
from tempering.store.models import File, Job, JobCheckpoint, JobEvent, Project, run_id_of

TRAIN = "".join(json.dumps(chat_example(f"What color is item {i}?", f"Item {i} is {['red', 'blue'][i % 2]}."))
                + "\n" for i in range(20))


def test_resource_rule():
    small, phi3 = 134_515_008, 3_821_079_552
    assert ray_options(small, "auto", cluster_gpus=8, largest_node_cpus=64) == \
        {"num_cpus": 1, "num_gpus": 0, "memory": GIB + 6 * small}
    assert ray_options(phi3, "auto", cluster_gpus=8, largest_node_cpus=64) == \
        {"num_cpus": 2, "num_gpus": 1, "memory": GIB + 2 * phi3}
    assert ray_options(phi3, "auto", cluster_gpus=0, largest_node_cpus=64)["num_cpus"] == 8
    assert ray_options(phi3, "auto", cluster_gpus=0, largest_node_cpus=4)["num_cpus"] == 4
    assert ray_options(small, "cuda", cluster_gpus=0, largest_node_cpus=4)["num_gpus"] == 1
    assert ray_options(phi3, "cpu", cluster_gpus=8, largest_node_cpus=64)["num_gpus"] == 0
    assert ray_options(None, "auto", cluster_gpus=8, largest_node_cpus=64) == {"num_cpus": 1, "num_gpus": 0}


def test_job_environment_passes_home_and_database_but_no_keys(tmp_path):
    settings = Settings(home=tmp_path)
    env = job_environment(settings, {"TEMPERING_EXECUTOR": "ray", "TEMPERING_API_KEY": "tk-x", "HF_HOME": "/hf",
                                     "TEMPERING_MAX_UPLOAD_BYTES": "5", "PATH": "/bin",
                                     "AWS_ENDPOINT_URL": "http://s3.internal:8333"})
    assert env == {"TEMPERING_HOME": str(tmp_path.resolve()), "HF_HOME": "/hf", "TEMPERING_MAX_UPLOAD_BYTES": "5",
                   "AWS_ENDPOINT_URL": "http://s3.internal:8333",
                   "TEMPERING_DATABASE_URL": f"sqlite:///{tmp_path.resolve() / 'tempering.db'}"}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def setup(ray_cluster, tiny_model, monkeypatch):
    """A migrated database with one project and an uploaded training file; the settings select Ray."""
    from tempering.store.artifacts import ArtifactStore
    from tempering.store.db import Database

    monkeypatch.setenv("TEMPERING_EXECUTOR", "ray")
    from tempering.settings import reset_settings

    reset_settings()
    settings = get_settings()
    db = Database(settings.database)
    db.migrate()
    store = ArtifactStore(settings.artifacts_dir)
    with db.session() as session:
        project = Project(name="p")
        session.add(project)
        session.flush()
        store.file_path("file-train").write_text(TRAIN, encoding="utf-8")
        session.add(File(id="file-train", project_id=project.id, filename="t.jsonl", purpose="fine-tune",
                         bytes=len(TRAIN), sha256="x", status="processed"))
        project_id = project.id
    yield db, project_id
    db.dispose()


def _job(db, project_id: str, model: str, **hyperparameters) -> str:
    with db.session() as session:
        job = Job(project_id=project_id, model=model, training_file="file-train", seed=3, status="validating_files",
                  config={"model": model, "task": "chat", "suffix": None, "hyperparameters": hyperparameters})
        session.add(job)
        session.flush()
        return job.id


def _get(db, job_id: str) -> Job:
    with db.session(write=False) as session:
        return session.get(Job, job_id)


def _count(db, job_id: str, kind) -> int:
    with db.session(write=False) as session:
        return len(session.query(kind).filter(kind.job_id == job_id).all())


def _worker(db, lease: float = 10.0):
    from tempering.jobs.executors import RayExecutor
    from tempering.jobs.worker import Worker

    worker = Worker(db, lease_seconds=lease)
    assert isinstance(worker.executor, RayExecutor)  # TEMPERING_EXECUTOR=ray picked it
    return worker


def _in_thread(worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_once, daemon=True)
    thread.start()
    return thread


def _wait_for(predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_job_runs_to_succeeded_as_a_ray_task(setup, tempering_home):
    db, project_id = setup
    job_id = _job(db, project_id, "tiny-llama", n_epochs=2, batch_size=2)
    worker = _worker(db)
    assert worker.run_once()
    job = _get(db, job_id)
    assert job.status == "succeeded", job.error
    assert job.worker_id is None and job.fine_tuned_model and job.result_files and job.trained_tokens
    assert _count(db, job_id, JobCheckpoint) == 2  # one per epoch, written by the task
    assert (tempering_home / "runs" / run_id_of(job_id) / "model" / "adapter_model.safetensors").exists()
    assert (tempering_home / "artifacts" / "files" / job.result_files[0]).exists()


def test_a_cancel_request_reaches_the_ray_task(setup):
    db, project_id = setup
    job_id = _job(db, project_id, "tiny-llama", n_epochs=50, batch_size=1)
    thread = _in_thread(_worker(db))
    _wait_for(lambda: _get(db, job_id).status in ("running", "failed"))
    queue.request_stop(db, job_id, "cancel")  # what POST …/cancel does for a running job
    thread.join(60)
    assert not thread.is_alive()
    job = _get(db, job_id)
    assert job.status == "cancelled" and job.worker_id is None and job.stop_requested is None


def test_a_lost_lease_cancels_the_ray_task(setup):
    db, project_id = setup
    job_id = _job(db, project_id, "tiny-llama", n_epochs=50, batch_size=1)
    thread = _in_thread(_worker(db, lease=1.5))
    _wait_for(lambda: _count(db, job_id, JobEvent) > 5 or _get(db, job_id).status == "failed")
    with db.session() as session:  # as if the lease had expired and another worker had taken the job over
        session.get(Job, job_id).worker_id = "someone-else"
    thread.join(30)
    assert not thread.is_alive()
    time.sleep(1.0)  # events the task was writing as it was killed
    before = _count(db, job_id, JobEvent)
    time.sleep(2.0)
    assert _count(db, job_id, JobEvent) == before  # the task is gone: no more steps
    job = _get(db, job_id)
    assert job.status == "running" and job.worker_id == "someone-else", job.error  # not failed by the worker that lost it


def test_kill_force_cancels_the_ray_task(setup):
    from tempering.jobs.executors import RayExecutor

    db, project_id = setup
    job_id = _job(db, project_id, "tiny-llama", n_epochs=50, batch_size=1)
    assert queue.claim(db, "w", 60) == job_id
    executor = RayExecutor()
    handle = executor.start(job_id, "w", 60)
    assert handle.options["num_gpus"] == 0 and handle.options["num_cpus"] == 1 and handle.options["memory"] > GIB
    _wait_for(lambda: _count(db, job_id, JobEvent) > 5 or executor.poll(handle) is not None)
    assert executor.poll(handle) is None
    executor.kill(handle)  # ray.cancel(ref, force=True)
    assert handle.code == -9 and "cancelled" in executor.describe(handle, handle.code)
    time.sleep(1.0)
    before = _count(db, job_id, JobEvent)
    time.sleep(2.0)
    assert _count(db, job_id, JobEvent) == before
