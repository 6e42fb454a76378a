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
) -> None:
    """Serve the OpenAI-compatible fine-tuning API."""
    import uvicorn

    from tempering.api.app import create_app
    from tempering.settings import get_settings

    quiet_libraries()
    app = create_app(get_settings(), workers=workers)
    err.print(f"Tempering API on http://{host}:{port}/v1 (OpenAPI at /openapi.json)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def worker() -> None:
    """Run a job worker in the foreground (claims queued jobs from the database)."""
    from tempering.jobs.worker import Worker
    from tempering.settings import get_settings
    from tempering.store.db import Database

    quiet_libraries()
    settings = get_settings()
    db = Database(settings.database)
    db.migrate()
    w = Worker(db, lease_seconds=settings.worker_lease_seconds)
    err.print(f"worker {w.id} polling {settings.database}")
    try:
        w.run_forever()
    except KeyboardInterrupt:
        w.stop()
