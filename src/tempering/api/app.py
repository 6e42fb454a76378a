"""The application factory: ``create_app(settings)`` builds everything (database, migrations, artifact
store, the in-process worker pool); nothing is created at import time, so tests inject a temp home."""

from __future__ import annotations

import hmac
import logging
import sys
from contextlib import asynccontextmanager, contextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

import tempering
from tempering.api import errors
from tempering.api.deps import ensure_admin_key
from tempering.api.limits import RequestGuard
from tempering.api.permissions import authorize
from tempering.api.routers import (
    blocklists,
    catalog,
    datasets,
    deployments,
    evaluations,
    exports,
    files,
    inference,
    jobs,
    models,
    moderations,
    organization,
    safety_categories,
    sweeps,
    usage,
    webhooks,
)
from tempering.settings import Settings
from tempering.store.artifacts import ArtifactStore
from tempering.store.db import Database

log = logging.getLogger(__name__)


def app_from_environment() -> FastAPI:
    """The app as ``tempering serve`` runs it (uvicorn's factory): settings, worker count included, from the
    environment. The command line names this function to uvicorn; it never imports the API itself."""
    from tempering.settings import get_settings

    settings = get_settings()
    return create_app(settings, workers=settings.server_workers)


@contextmanager
def _background(db: Database, settings: Settings, workers: int, cipher):
    """The app's threads: the job workers and the webhook delivery thread, stopped when the app stops."""
    from tempering.jobs.executors import make_executor
    from tempering.jobs.worker import start_pool
    from tempering.services.sweeps import advance_sweeps
    from tempering.services.webhooks import Sender

    pool = start_pool(db, workers, settings.worker_lease_seconds, make_executor(settings),
                      between_jobs=advance_sweeps) if workers else []
    sender = Sender(db, cipher, settings)
    sender.start()
    try:
        yield
    finally:
        sender.stop()
        for worker, _ in pool:
            worker.stop()


def create_app(settings: Settings, *, workers: int = 1) -> FastAPI:
    db = Database(settings.database)
    db.migrate()
    first = _first_start(db)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        with _background(db, settings, workers, app.state.cipher):
            yield
        await serving.aclose()
        monitor.close()
        db.dispose()

    from tempering.serve.registry import Serving

    serving = Serving(max_batch=settings.serve_max_batch, max_adapters=settings.serve_max_adapters,
                      threads=settings.serve_threads, quantize=settings.serve_quantize)
    from tempering.services.chat import ChatService
    from tempering.services.monitoring import Monitor

    monitor = Monitor(db, serving, settings)
    app = FastAPI(title="Tempering", version=tempering.__version__, lifespan=lifespan,
                  dependencies=[Depends(authorize)],
                  description="Self-hosted fine-tuning and serving, speaking OpenAI's fine-tuning and chat protocols.")
    app.state.settings = settings
    app.state.db = db
    app.state.store = ArtifactStore(settings.artifacts_dir)
    from tempering.services.accounts import SignInThrottle
    from tempering.services.secrets import Cipher

    app.state.cipher = Cipher(settings)  # hub secrets at rest; the portal's session signing key
    app.state.sign_in = SignInThrottle(settings.rate_limit_url)
    from tempering.services.files import sweep_orphans

    sweep_orphans(db, app.state.store)  # what a server killed mid-upload left: bytes without a row, temp files
    app.state.initial_api_key = first.admin_key
    app.state.initial_admin_password = first.admin_password
    app.state.serving = serving  # engines load lazily, on a deployment's first request
    app.state.monitor = monitor
    app.state.chat = ChatService(db, serving, monitor, settings)  # the serving path the API and portal share
    errors.install(app)
    app.add_middleware(RequestGuard, db=db, max_json_bytes=settings.max_json_bytes,
                       max_form_upload_bytes=settings.max_upload_bytes + 64 * 1024)
    for router in (files.router, jobs.router, models.router, evaluations.router, deployments.router,
                   inference.router, datasets.router, catalog.router, exports.router, moderations.router,
                   blocklists.router, safety_categories.router, organization.router, usage.router, webhooks.router,
                   sweeps.router):
        app.include_router(router)
    from tempering import web

    web.mount(app)  # the portal's pages, under the same permission dependency (web.PAGES)

    _meta_routes(app, settings, monitor)
    return app


def _first_start(db):
    """What the server's first start creates (``accounts.bootstrap``), printed once on standard error."""
    first = ensure_admin_key(db)
    if first.admin_password:
        print(f"Created the admin user 'admin' with the password (shown once, store it now): "
              f"{first.admin_password}", file=sys.stderr, flush=True)
    if first.admin_key:
        print(f"Created the admin API key (shown once, store it now): {first.admin_key}", file=sys.stderr,
              flush=True)
    return first


def _meta_routes(app: FastAPI, settings: Settings, monitor) -> None:
    """``/health`` and ``/metrics`` (public routes; /metrics has its own scrape token)."""
    @app.get("/health", tags=["meta"])
    def health() -> dict:
        return {"status": "ok", "version": tempering.__version__}

    @app.get("/metrics", tags=["meta"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                        401: errors.ERROR_RESPONSES[401]})
    def metrics(request: Request) -> Response:
        """Prometheus metrics of serving: requests by deployment and status, latency and time-to-first-token
        histograms, tokens, requests in flight, and each engine's batch, queue and loaded adapters. With
        ``TEMPERING_METRICS_TOKEN`` set, only a scraper sending it as a bearer token gets them (by deployment);
        without it, anyone gets the aggregates only, with no deployment ids (docs/serving.md)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        token = settings.metrics_token or None  # an empty token would let an empty header through
        if token is None:
            return Response(generate_latest(monitor.aggregate()), media_type=CONTENT_TYPE_LATEST)
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
            raise errors.APIError(401, "/metrics needs the scrape token: 'Authorization: Bearer TOKEN'.",
                                  code="invalid_api_key")
        return Response(generate_latest(monitor.registry), media_type=CONTENT_TYPE_LATEST)
