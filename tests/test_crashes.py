"""The crash matrix in real processes (hardening issue 12): a worker killed mid-checkpoint, a full disk while
a checkpoint is written, a runner out of memory, a server killed mid-upload and mid-stream. Each must end in a
consistent state: the job resumes or fails with a reason (never stuck in ``running``), no partial file is
trusted, no stored file is left without its row.

Faults are injected from outside the product: ``tests/faults/sitecustomize.py`` is loaded by the runner
processes of these clusters (see its docstring). A worker killed mid-epoch is
``test_workers.test_killed_worker_job_is_taken_over_and_resumed_exactly``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import TINY_ID
from live_server import free_port, register_model
from test_workers import TRAIN, Cluster, _wait

from tempering.store.models import run_id_of

pytestmark = pytest.mark.e2e
FAULTS = Path(__file__).parent / "faults"
# 22 training examples (2 held out) in batches of 2: 11 steps an epoch, a checkpoint after each
HYPERPARAMETERS = {"n_epochs": 3, "batch_size": 2}


@pytest.fixture
def faulty(tiny_model_dir, tmp_path):
    """A cluster (``test_workers.Cluster``) whose runners load the fault injector, with its fault folder."""
    home = tmp_path / "cluster-home"
    register_model(home, TINY_ID, tiny_model_dir)
    cluster = Cluster(home, free_port())
    fault = tmp_path / "fault"
    fault.mkdir()
    path = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH")) if p)
    cluster.env.update(PYTHONPATH=path, FAULT_DIR=str(fault))
    cluster.fault = fault
    workers: list[subprocess.Popen] = []
    cluster.start_worker = _tracked(cluster.start_worker, workers)
    yield cluster
    for process in [*workers, cluster.server]:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def _tracked(start, started: list):
    def start_worker():
        process = start()
        started.append(process)
        return process

    return start_worker


def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    return "Z"


def _start_job(cluster, hyperparameters=HYPERPARAMETERS, **fault):
    cluster.env.update({k: str(v) for k, v in fault.items()})
    client = cluster.start_server()
    file_id = client.files.create(file=("t.jsonl", TRAIN), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=TINY_ID, training_file=file_id, seed=3,
                                         hyperparameters=hyperparameters)
    return client, job


def _checkpoints(cluster, job) -> list[str]:
    folder = cluster.home / "runs" / run_id_of(job.id) / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_worker_killed_mid_checkpoint_write_resumes_from_the_last_complete_one(faulty):
    client, job = _start_job(faulty, FAULT_PAUSE_CHECKPOINT=2)
    first = faulty.start_worker()
    paused = faulty.fault / "paused"
    partial = Path(_until(lambda: paused.exists() and paused.read_text(), 180, "the second checkpoint write"))
    runner = int((faulty.fault / "fired").read_text())
    assert partial.name.startswith(".step-000022.") and (partial / "adapter_model.safetensors").is_file()
    first.send_signal(signal.SIGKILL)
    first.wait()
    _until(lambda: not _alive(runner), 10, "the runner to die with its worker")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # until the lease expires
    assert _checkpoints(faulty, job) == [partial.name, "step-000011"]  # the half-written one is no checkpoint

    faulty.start_worker()
    done = _wait(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any(e.message.startswith("Resumed from checkpoint at step 11") for e in events)
    steps = sorted(e.data["step"] for e in events if e.type == "metrics")
    assert steps == list(range(1, 34))  # every step once: the lost ones were redone, none twice
    assert _checkpoints(faulty, job) == ["step-000011", "step-000022", "step-000033"]  # the dead temp is gone


@pytest.fixture
def small_disk(faulty):
    """The runs folder on a 4 MB tmpfs (needs root and mount; skipped otherwise)."""
    runs = faulty.home / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(runs)],  # noqa: S607
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    yield runs
    subprocess.run(["umount", "-l", str(runs)], check=False)  # noqa: S607


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    return filler


def test_full_disk_during_a_checkpoint_write_fails_the_job_with_a_reason(faulty, small_disk):
    client, job = _start_job(faulty, FAULT_PAUSE_CHECKPOINT=2)
    faulty.start_worker()
    _until(lambda: (faulty.fault / "paused").exists(), 180, "the second checkpoint write")
    filler = _fill(small_disk)
    (faulty.fault / "go").touch()
    done = _wait(client, job.id, ("succeeded", "failed"), timeout=60)
    assert done.status == "failed"
    assert done.error.code == "disk_full" and "No space left on device" in done.error.message, done.error
    assert str(faulty.home) not in done.error.message  # the server's paths are not shown
    filler.unlink()
    assert _checkpoints(faulty, job) == ["step-000011"]  # nothing half-written is left to be trusted


def test_runner_out_of_memory_fails_the_job_with_a_reason(faulty):
    # no room to grow once training starts, and a batch of every example: its logits (22 answers × 49k
    # vocabulary) need tens of MB, which the allocator asks the kernel for, and is refused
    client, job = _start_job(faulty, {"n_epochs": 1, "batch_size": 22}, FAULT_OOM_MARGIN=0)
    faulty.start_worker()
    done = _wait(client, job.id, ("succeeded", "failed"), timeout=180)
    assert (faulty.fault / "fired").exists()
    assert done.status == "failed"
    assert done.error.code == "out_of_memory", done.error
    assert (faulty.fault / "fired").exists()


# ---- the server -------------------------------------------------------------------------------------------

def _rows(home: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(home / "tempering.db")) as db:
        return {r[0] for r in db.execute("SELECT id FROM files")}


def _stored(home: Path) -> list[str]:
    folder = home / "artifacts" / "files"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_server_killed_mid_upload_leaves_no_file_without_its_row(faulty):
    client = faulty.start_server()
    line = TRAIN.splitlines(keepends=True)[0]
    big = TRAIN + line * (40_000_000 // len(line))  # validating it takes seconds
    url = f"http://127.0.0.1:{faulty.port}/v1/files"

    def upload():
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(url, headers={"Authorization": f"Bearer {faulty.key}"}, data={"purpose": "fine-tune"},
                       files={"file": ("big.jsonl", big)}, timeout=120)

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    _until(lambda: [n for n in _stored(faulty.home) if n not in _rows(faulty.home)], 60, "the upload's bytes")
    faulty.server.send_signal(signal.SIGKILL)
    faulty.server.wait()
    sender.join(30)
    orphans = [n for n in _stored(faulty.home) if n not in _rows(faulty.home)]
    assert orphans  # the crash left bytes without a row (or a temp file) …
    past = time.time() - 3600
    for name in orphans:  # … found by a restart some time later (a fresh one may belong to a live upload)
        os.utime(faulty.home / "artifacts" / "files" / name, (past, past))

    client = faulty.start_server()
    assert [n for n in _stored(faulty.home) if n not in _rows(faulty.home)] == []
    assert [f.filename for f in client.files.list()] == []
    again = client.files.create(file=("t.jsonl", TRAIN), purpose="fine-tune")
    assert client.files.content(again.id).read() == TRAIN


def test_server_killed_mid_stream_serves_again_after_a_restart(faulty):
    client = faulty.start_server()
    http = httpx.Client(base_url=f"http://127.0.0.1:{faulty.port}/v1",
                        headers={"Authorization": f"Bearer {faulty.key}"}, timeout=60)
    assert http.post("/deployments", json={"model": TINY_ID, "name": "tiny"}).status_code == 200
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "Count."}], "stream": True,
           "max_tokens": 400, "temperature": 1.0, "seed": 1}
    with http.stream("POST", "/chat/completions", json=ask) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert [next(lines) for _ in range(6)]  # the stream is flowing
        faulty.server.send_signal(signal.SIGKILL)
        faulty.server.wait()
        with pytest.raises(httpx.HTTPError):
            for _ in lines:
                pass

    client = faulty.start_server()
    chunks = list(client.chat.completions.create(model="tiny", messages=ask["messages"], stream=True,
                                                 max_tokens=20, seed=1))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    log = http.get("/deployments/tiny/requests").json()["data"]
    assert log and log[0]["status"] == 200


def test_runner_whose_worker_died_before_it_started_does_not_run(tmp_path):
    """The runner arranges to die with its worker (PR_SET_PDEATHSIG) only once it has started; a worker killed
    before that would leave it training beside the worker that takes the job over. It checks and exits."""
    import sys

    from tempering.jobs.executors import PARENT_PID

    log = tmp_path / "runner.log"
    parent = ("import os, subprocess, sys\n"
              f"env = {{**os.environ, {PARENT_PID!r}: str(os.getpid())}}\n"
              f"p = subprocess.Popen([sys.executable, '-m', 'tempering.jobs.runner', 'ftjob-none'], env=env, "
              f"stderr=open({str(log)!r}, 'w'))\n"
              "print(p.pid, flush=True)\n"
              "os._exit(0)\n")
    started = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True)
    runner = int(started.stdout)
    _until(lambda: not _alive(runner), 60, "the runner to exit")
    assert "is gone; not running it" in log.read_text()


def test_failure_reasons_name_what_ran_out():
    import errno

    from tempering.jobs.executors import exit_reason
    from tempering.jobs.runner import failure

    root = {"/srv/home": "TEMPERING_HOME"}
    full = failure(OSError(errno.ENOSPC, "No space left on device", "/srv/home/runs/x/.tmp"), root)
    assert full["code"] == "disk_full" and "TEMPERING_HOME/runs/x" in full["message"]
    assert "/srv" not in full["message"]
    assert failure(MemoryError(), root)["code"] == "out_of_memory"
    torch_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory")
    assert failure(torch_oom, root)["code"] == "out_of_memory"
    safetensors = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert failure(safetensors, root)["code"] == "disk_full"
    assert failure(KeyError("x"), root) == {"code": "internal_error", "message": "KeyError: 'x'",
                                            "param": None}
    assert exit_reason(1) == "exited with code 1"
    assert exit_reason(-9).startswith("was killed by SIGKILL (the system ran out of memory")
    assert exit_reason(-25).startswith("was killed by SIGXFSZ")


def test_a_deleted_file_keeps_its_bytes_until_the_row_says_so(tempering_home):
    """Deleting removed the bytes before the transaction committed: a commit that failed (or a server killed
    in between) left a live row without its file. The bytes now go after the commit."""
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.services import files
    from tempering.settings import get_settings
    from tempering.store.models import File

    app = create_app(get_settings(), workers=0)
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {app.state.initial_api_key}"}
    file_id = client.post("/v1/files", headers=headers, files={"file": ("t.jsonl", TRAIN)},
                          data={"purpose": "fine-tune"}).json()["id"]
    store, db = app.state.store, app.state.db
    project = db.new_session().get(File, file_id).project_id
    session = db.new_session()
    files.delete_file(session, project, store, file_id)
    session.rollback()  # the commit never happened
    session.close()
    assert store.file_path(file_id).read_bytes() == TRAIN
    assert client.get(f"/v1/files/{file_id}/content", headers=headers).content == TRAIN
    assert client.delete(f"/v1/files/{file_id}", headers=headers).status_code == 200
    assert not store.file_path(file_id).exists()
