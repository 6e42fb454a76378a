"""The application factory: ``create_app(settings)`` builds everything (database, migrations, artifact
store, the in-process worker pool); nothing is created at import time, so tests inject a temp home."""

from __future__ import annotations

import logging
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI

import tempering
from tempering.api import errors
from tempering.api.deps import ensure_admin_key
from tempering.api.routers import evaluations, files, jobs, models
from tempering.settings import Settings
from tempering.store.artifacts import ArtifactStore
from tempering.store.db import Database

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, workers: int = 1) -> FastAPI:
    db = Database(settings.database)
    db.migrate()
    initial_key = ensure_admin_key(db)
    if initial_key:
        print(f"Created the admin API key (shown once, store it now): {initial_key}", file=sys.stderr, flush=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from tempering.jobs.executors import make_executor
        from tempering.jobs.worker import start_pool

        pool = start_pool(db, workers, settings.worker_lease_seconds, make_executor(settings)) if workers else []
        yield
        for worker, _ in pool:
            worker.stop()
        db.dispose()

    app = FastAPI(title="Tempering", version=tempering.__version__, lifespan=lifespan,
                  description="Self-hosted fine-tuning speaking OpenAI's fine-tuning protocol.")
    app.state.settings = settings
    app.state.db = db
    app.state.store = ArtifactStore(settings.artifacts_dir)
    app.state.initial_api_key = initial_key
    errors.install(app)
    for router in (files.router, jobs.router, models.router, evaluations.router):
        app.include_router(router)

    @app.get("/health", tags=["meta"])
    def health() -> dict:
        return {"status": "ok", "version": tempering.__version__}

    return app
