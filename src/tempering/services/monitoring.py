"""Monitoring of deployments: every served request becomes a row of the request log (written by a background
thread, so serving never waits on the database and a caller that goes away mid-stream is still logged) and
updates the Prometheus metrics exposed at ``/metrics``."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from tempering.store import usage
from tempering.store.models import DeploymentRequest, UsageRecord

log = logging.getLogger(__name__)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class RequestRecord:
    deployment_id: str
    created_at: float
    endpoint: str
    adapter: str | None
    stream: bool
    status: int
    error_code: str | None
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    filtered: str | None = None  # a content filter hit: "prompt" or "completion"
    filtered_categories: list[str] | None = None
    key_id: str | None = None  # the API key that called
    project_id: str | None = None  # the deployment's project and base model: the usage ledger's row
    base_model: str | None = None

    def log_row(self) -> DeploymentRequest:
        fields = vars(self)
        return DeploymentRequest(**{k: v for k, v in fields.items() if k not in ("project_id", "base_model")})


class _EngineCollector:
    """Gauges read from the live engines at scrape time."""

    def __init__(self, serving):
        self.serving = serving

    def collect(self):
        active = GaugeMetricFamily("tempering_engine_active_sequences", "Sequences being decoded", labels=["base_model"])
        queued = GaugeMetricFamily("tempering_engine_queued_requests", "Requests waiting for a batch row",
                                   labels=["base_model"])
        adapters = GaugeMetricFamily("tempering_engine_adapters_loaded", "Adapters loaded on the base model",
                                     labels=["base_model"])
        memory = GaugeMetricFamily("tempering_engine_memory_bytes", "Bytes of the engine's weights (quantized "
                                   "copies included) and loaded adapters", labels=["base_model"])
        # the label is the engine's name: the base model, then +full-<digest> and @int8 / @int4 where they apply
        for base, engine in list(self.serving.engines.items()):
            active.add_metric([base], len(engine.active))
            queued.add_metric([base], engine.queued)
            adapters.add_metric([base], engine.adapters_loaded)
            if engine.loaded and (size := engine.memory_bytes) is not None:
                memory.add_metric([base], size)
        yield from (active, queued, adapters, memory)


class AggregateView:
    """The registry with the ``deployment`` label summed away: what ``/metrics`` shows without a scrape token,
    so an open endpoint names no project's deployments and tells no project's traffic apart. Counters,
    histogram buckets and gauges all sum across deployments."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():
            summed: dict[tuple, float] = {}
            for sample in family.samples:
                labels = tuple((k, v) for k, v in sample.labels.items() if k != "deployment")
                key = (sample.name, labels)
                summed[key] = summed.get(key, 0.0) + sample.value
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            for (name, labels), value in summed.items():
                merged.add_sample(name, dict(labels), value)
            yield merged


class Monitor:
    def __init__(self, db, serving, settings=None):
        self.db, self.settings = db, settings
        self.registry = CollectorRegistry()
        labels = ["deployment", "endpoint"]
        self.requests = Counter("tempering_requests", "Requests served, by HTTP status", labels + ["status"],
                                registry=self.registry)
        self.latency = Histogram("tempering_request_latency_seconds", "Time from request to last byte", labels,
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("tempering_time_to_first_token_seconds", "Time from request to the first token",
                              labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("tempering_tokens", "Tokens processed", ["deployment", "kind"], registry=self.registry)
        # no deployment or project label: a category count must not tell one tenant's traffic to another's
        self.filter_hits = Counter("tempering_content_filter_hits", "Requests the content filter blocked (a "
                                   "prompt refused or an answer cut), by category and direction",
                                   ["category", "direction"], registry=self.registry)
        self.in_flight = Gauge("tempering_requests_in_flight", "Requests being served", ["deployment"],
                               registry=self.registry)
        self.registry.register(_EngineCollector(serving))
        self._queue: queue.Queue[RequestRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="request-log", daemon=True)
        self._thread.start()

    def aggregate(self) -> AggregateView:
        return AggregateView(self.registry)

    def record(self, r: RequestRecord) -> None:
        labels = (r.deployment_id, r.endpoint)
        self.requests.labels(*labels, str(r.status)).inc()
        self.latency.labels(*labels).observe(r.latency_ms / 1000)
        if r.ttft_ms is not None:
            self.ttft.labels(*labels).observe(r.ttft_ms / 1000)
        self.tokens.labels(r.deployment_id, "prompt").inc(r.prompt_tokens)
        self.tokens.labels(r.deployment_id, "completion").inc(r.completion_tokens)
        for category in r.filtered_categories or ():
            self.filter_hits.labels(category, r.filtered).inc()
        self._queue.put(r)

    def flush(self) -> None:
        """Wait until every record so far is in the database."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _usage_rows(self, session, records: list[RequestRecord]) -> list[UsageRecord]:
        """The usage ledger's rows of a batch of requests: one per request that used tokens and did not fail
        on the server's side (5xx), priced once per project and model of the batch, written in the request
        log's transaction."""
        prices: dict[tuple[str, str], usage.Prices] = {}
        rows = []
        for r in records:
            if r.project_id is None or r.base_model is None or not (r.prompt_tokens or r.completion_tokens) \
                    or r.status >= 500:  # the server's failure is not the caller's bill
                continue
            key = (r.project_id, r.base_model)
            if key not in prices:
                prices[key] = usage.prices_for(session, r.project_id, r.base_model, self.settings)
            rows.append(usage.inference_row(prices[key], project_id=r.project_id, model=r.base_model,
                                            deployment_id=r.deployment_id, key_id=r.key_id,
                                            created_at=r.created_at, input_tokens=r.prompt_tokens,
                                            output_tokens=r.completion_tokens))
        return rows

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while first is not None:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [r for r in batch if r is not None]
            try:
                if rows:
                    with self.db.session() as session:
                        session.add_all(r.log_row() for r in rows)
                        session.add_all(self._usage_rows(session, rows))
            except Exception:  # losing log rows must not stop serving
                log.exception("could not write %d request log rows", len(rows))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if None in batch:
                return
