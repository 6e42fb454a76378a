"""Fault injection for the crash tests (tests/test_crashes.py, bench/reliability.py): put this folder on
``PYTHONPATH`` and Python loads it in every process it starts. It acts only in a job's runner process
(``python -m tempering.jobs.runner``) and only when ``FAULT_DIR`` names a folder; the product holds no
test hooks. Each fault fires once per ``FAULT_DIR`` (the file ``fired`` remembers it), so the worker that
takes a job over runs it normally.

- ``FAULT_PAUSE_CHECKPOINT=N``: the N-th checkpoint write of the runner stops half-way (the adapter is in
  the checkpoint's temp folder, the training state is not): it writes ``FAULT_DIR/paused`` (holding the temp
  folder's path) and waits until ``FAULT_DIR/go`` exists, then carries on.
- ``FAULT_OOM_MARGIN=BYTES``: when training starts, the runner's address space is capped (``RLIMIT_AS``) at
  its current size plus BYTES, so the next allocations fail as they do on a machine out of memory.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from pathlib import Path

FAULT_DIR = os.environ.get("FAULT_DIR")
IN_RUNNER = "tempering.jobs.runner" in getattr(sys, "orig_argv", [])


def _fire() -> bool:
    """True the first time a fault fires for this FAULT_DIR, across processes."""
    try:
        fd = os.open(Path(FAULT_DIR) / "fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _patch_checkpoint(module) -> None:
    wanted = int(os.environ.get("FAULT_PAUSE_CHECKPOINT", "0"))
    if not wanted:
        return
    real = module.write_training_state
    calls = {"n": 0}

    def write_training_state(folder, **kwargs):
        calls["n"] += 1
        if calls["n"] == wanted and _fire():
            fault = Path(FAULT_DIR)
            (fault / "paused").write_text(str(folder))
            deadline = time.monotonic() + 300
            while not (fault / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return real(folder, **kwargs)

    module.write_training_state = write_training_state


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def _patch_fit(module) -> None:
    if "FAULT_OOM_MARGIN" not in os.environ:
        return
    margin = int(os.environ["FAULT_OOM_MARGIN"])
    real = module.fit

    def fit(*args, **kwargs):
        if _fire():
            import resource

            limit = _vm_size() + margin
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        return real(*args, **kwargs)

    module.fit = fit


PATCHES = {"tempering.train.checkpoint": _patch_checkpoint, "tempering.train.fit": _patch_fit}


class _Patcher(importlib.abc.MetaPathFinder):
    """Finds the modules to patch with the normal finder and patches each right after it has run."""

    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        loader = spec.loader
        real_exec = loader.exec_module

        def exec_module(module):
            real_exec(module)
            PATCHES[name](module)

        loader.exec_module = exec_module
        return spec


if FAULT_DIR and IN_RUNNER:
    sys.meta_path.insert(0, _Patcher())
