"""``tempering serve`` (the REST API with an in-process worker pool) and ``tempering worker``."""

from __future__ import annotations

from typing import Annotated

import typer

from tempering.cli.common import err, quiet_libraries


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Job workers started in this process (0: none; run "
                                              "`tempering worker` elsewhere).")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "warning",
) -> None:
    """Serve the OpenAI-compatible fine-tuning API."""
    import os

    import uvicorn

    from tempering.settings import reset_settings

    quiet_libraries()
    os.environ["TEMPERING_SERVER_WORKERS"] = str(workers)
    reset_settings()
    err.print(f"Tempering API on http://{host}:{port}/v1 (OpenAPI at /openapi.json)")
    # The edges stay apart: uvicorn loads the API by name, the command line never imports it.
    uvicorn.run("tempering.api.app:app_from_environment", factory=True, host=host, port=port, log_level=log_level)


def worker() -> None:
    """Run a job worker in the foreground (claims queued jobs from the database and advances sweeps)."""
    from tempering.jobs.worker import Worker
    from tempering.services.sweeps import advance_sweeps
    from tempering.settings import get_settings
    from tempering.store.db import Database

    quiet_libraries()
    settings = get_settings()
    db = Database(settings.database)
    db.migrate()
    w = Worker(db, lease_seconds=settings.worker_lease_seconds, between_jobs=advance_sweeps)
    err.print(f"worker {w.id} polling {settings.database}")
    try:
        w.run_forever()
    except KeyboardInterrupt:
        w.stop()
