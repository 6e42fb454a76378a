"""One thread for a serving process's model computations: every engine's loads and decode steps, and the
classifiers' requests, run on it in turn.

PyTorch's CPU kernels parallelise with OpenMP, and GNU OpenMP gives every thread that starts parallel work a team
of its own. Once a process holds more OpenMP threads than CPUs, libgomp stops letting idle team members spin
(its throttled spin count), so each of the hundreds of small parallel regions of a decode step wakes its team
through the kernel instead. Measured on this 2-core machine (int4 weights, one stream): an engine decoding at
17 ms a token took 29-37 ms once a second engine had loaded or decoded in its own thread, and stayed there with
the other one idle. With every computation on one thread there is one team, whatever the number of engines,
and on a CPU nothing is lost: two engines computing at once would only share the same cores.

``run(fn, ...)`` calls ``fn`` on the compute thread and returns its result (directly when already on it);
``run_async`` awaits the same from an event loop. Knows nothing about models or HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_thread: threading.Thread | None = None


def _started() -> None:
    global _thread
    _thread = threading.current_thread()


def executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempering-compute",
                                           initializer=_started)
        return _executor


def on_compute_thread() -> bool:
    return threading.current_thread() is _thread


def run(fn, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the compute thread, waiting for it; its exception is raised here."""
    if on_compute_thread():
        return fn(*args, **kwargs)
    return executor().submit(fn, *args, **kwargs).result()


async def run_async(fn, /, *args, **kwargs):
    """``run`` for an event loop: the loop is free while the compute thread works."""
    return await asyncio.wrap_future(executor().submit(fn, *args, **kwargs))
