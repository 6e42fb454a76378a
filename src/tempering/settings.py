"""Settings: where Tempering keeps its state. Read from the environment (``TEMPERING_*``).

Everything Tempering writes lives under ``TEMPERING_HOME``; nothing here knows about models or HTTP.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEMPERING_", extra="ignore")

    home: Path = Field(
        default=Path("~/.tempering"),
        description="Folder holding the model cache, data, runs and (later) the database.",
    )

    price_per_1k_training_tokens: dict[str, float] = Field(
        default={
            "smollm2-135m-instruct": 0.0002,
            "phi-3-mini-4k-instruct": 0.002,
            "phi-3-mini-128k-instruct": 0.002,
            "phi-3.5-mini-instruct": 0.002,
            "phi-3-medium-4k-instruct": 0.006,
            "*": 0.002,
        },
        description="Price in USD per 1,000 trained tokens (tokens per epoch × epochs), per catalog id; '*' "
        "prices any other model. The defaults are indicative internal chargebacks that grow with model "
        "size; put your own in TEMPERING_PRICE_PER_1K_TRAINING_TOKENS as a JSON object (it replaces the "
        "whole table). A hub's settings.prices override it (docs/usage.md).",
    )

    price_per_hosting_hour: dict[str, float] = Field(
        default={"smollm2-135m-instruct": 0.02, "phi-3-medium-4k-instruct": 0.6, "*": 0.2},
        description="Price in USD per hour a deployment exists (creation to deletion), per base model's catalog "
        "id; '*' prices any other. A hub's settings.prices override it (docs/usage.md).")
    price_per_1k_input_tokens: dict[str, float] = Field(
        default={"smollm2-135m-instruct": 0.00002, "phi-3-medium-4k-instruct": 0.0006, "*": 0.0002},
        description="Price in USD per 1,000 prompt tokens a deployment serves, per base model's catalog id; "
        "'*' prices any other.")
    price_per_1k_output_tokens: dict[str, float] = Field(
        default={"smollm2-135m-instruct": 0.00008, "phi-3-medium-4k-instruct": 0.0024, "*": 0.0008},
        description="Price in USD per 1,000 generated tokens a deployment serves, per base model's catalog "
        "id; '*' prices any other.")

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the database; default: a SQLite file in the home. "
        "PostgreSQL: postgresql+psycopg://user:password@host/db.")
    artifacts_url: str | None = Field(
        default=None, description="Where artifacts (uploads, checkpoints, fine-tuned models, evaluation reports, "
        "exports) are shared between machines: 's3://bucket/prefix' for S3-compatible object storage (endpoint and "
        "credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION), or "
        "'file:///mnt/share' for a mounted folder. Unset: the home holds them (docs/scale-out.md).")
    artifacts_cache_bytes: int = Field(
        default=20 * 2**30, ge=0, description="With artifacts_url set: the most bytes of pulled and published "
        "artifacts this home keeps as a cache (least recently used evicted first; base model weights are not "
        "counted).")
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1, description="Largest accepted upload "
                                  "(the file's bytes); a larger declared Content-Length is refused before reading.")
    max_json_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Largest request body of every "
                                "route but the upload: a larger Content-Length is refused (413) before the body "
                                "is read, a chunked body is cut off at the limit.")
    metrics_token: str | None = Field(default=None, description="Bearer token a Prometheus scraper sends to "
                                      "/metrics. Set: /metrics needs it and shows per-deployment series. Unset: "
                                      "/metrics is open but shows only aggregates (no deployment ids).")
    server_workers: int = Field(default=1, ge=0, le=64, description="Job workers `tempering serve` starts in "
                                "its own process (0: none; run `tempering worker` elsewhere).")
    worker_lease_seconds: float = Field(default=30.0, gt=0, description="How long a worker's claim on a job "
                                        "lasts without a heartbeat; after that another worker takes it over.")
    executor: Literal["local", "ray"] = Field(
        default="local", description="Where a worker runs the jobs it claims: 'local', a subprocess beside "
        "the worker; 'ray', a task on the Ray cluster at ray_address, with CPU, GPU and memory requests "
        "derived from the model and config (docs/ray.md). Claims, leases and heartbeats are the same.")
    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("ray_address", "TEMPERING_RAY_ADDRESS", "RAY_ADDRESS"),
        description="The Ray cluster for executor 'ray' (TEMPERING_RAY_ADDRESS or Ray's own RAY_ADDRESS): "
        "'auto' (the cluster this machine belongs to), 'ray://head:10001' (Ray Client); unset, a worker "
        "starts a private local Ray instance.")
    ray_task_options: dict[str, Any] = Field(
        default_factory=dict, description="Ray task options merged over the derived ones, as a JSON object, "
        "e.g. {\"num_cpus\": 8, \"accelerator_type\": \"H100\"}.")

    serve_max_batch: int = Field(default=16, ge=1, le=256, description="Sequences one engine decodes together "
                                 "(continuous batching); requests beyond it wait for a free row.")
    serve_max_adapters: int = Field(default=8, ge=1, description="Adapters an engine keeps loaded on its base "
                                    "model; the least recently used is evicted beyond it.")
    serve_default_max_tokens: int = Field(default=2048, ge=1, description="Most tokens a chat answer may have "
                                          "when the request sets no max_tokens (at most the room left in the "
                                          "model's context).")
    serve_threads: int | None = Field(default=None, ge=1, description="CPU threads for the serving engines "
                                      "(default: torch's choice).")
    serve_quantize: Literal["none", "int8", "int4"] = Field(
        default="none", description="Weights of served base models: 'none' keeps the model's dtype (float32 on "
        "a CPU); 'int8' stores the linear layers as int8 per channel, about 3x faster decoding on a CPU, with "
        "slightly different answers; 'int4' as int4 in groups of 32 (half int8's bytes; answers differ more) "
        "(docs/serving.md). Adapters stay float.")
    upstream_api_key: str | None = Field(default=None, description="Bearer key sent to upstream "
                                         "(OpenAI-compatible) backends of deployments; only ever sent to the "
                                         "allowed upstream URLs.")
    upstream_allowed_urls: list[str] = Field(
        default_factory=list, description="The OpenAI-compatible servers deployments may forward to (JSON list "
        "of base URLs, e.g. [\"http://vllm.internal:8000/v1\"]); an upstream deployment must name one of them "
        "exactly. Empty: no upstream deployments.")
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts (names or IP addresses, JSON list) webhooks may reach over "
        "plain http and at loopback, private or link-local addresses; every other webhook URL must be https to "
        "a public address.")
    webhook_max_attempts: int = Field(default=8, ge=1, le=30, description="Tries of one webhook delivery "
                                      "before it is marked failed.")
    webhook_backoff_seconds: float = Field(
        default=30.0, gt=0, description="Wait after a webhook delivery's first failed try; doubled after each "
        "further one (30 s, 1 min, 2 min, … by default), at most 6 hours.")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="How long one webhook "
                                           "delivery waits for the receiver's answer.")
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60, description="How often the delivery thread "
                                        "looks for due webhook deliveries.")
    serve_max_concurrent_requests: int = Field(
        default=64, ge=1, le=1024, description="The most concurrent requests a deployment may be given.")
    content_filter_policy: dict[str, Any] | None = Field(
        default=None, description="The server's default content filter policy (a SafetyPolicy as JSON, "
        "docs/safety.md), used by every deployment that sets none of its own; default: SafetyPolicy()'s "
        "defaults.")

    secret_key: str | None = Field(
        default=None, description="The server key (a Fernet key; several comma-separated, the first encrypts) "
        "that encrypts hub secrets and signs portal sessions; default: one generated in $TEMPERING_HOME/server.key.")
    default_quotas: dict[str, int] = Field(
        default={"concurrent_jobs": 4, "trained_tokens_per_day": 1_000_000_000, "stored_bytes": 100 * 2**30,
                 "deployments": 32},
        description="Every project's quotas unless its hub (settings.default_quotas) or the project itself sets "
        "them (docs/quotas.md): concurrent_jobs (fine-tuning jobs running at once; more wait queued), "
        "trained_tokens_per_day (tokens × epochs of the jobs started in a UTC day), stored_bytes (the project's "
        "files), deployments (live deployments). A JSON object; keys left out keep these defaults.")
    rate_limit_url: str | None = Field(
        default=None, description="Storage of rate limits and sign-in throttling (the `limits` library's URL): "
        "default in-process ('memory://'); 'redis://host:6379' to hold the limits across several API processes.")

    @field_validator("artifacts_url")
    @classmethod
    def _artifacts_url(cls, value):
        if value is None or value == "":
            return None
        scheme, _, rest = value.partition("://")
        if scheme not in ("s3", "file") or not rest.strip("/"):
            raise ValueError(f"artifacts_url must be s3://bucket/prefix or file:///folder, not {value[:200]!r}")
        return value

    @field_validator("default_quotas", mode="before")
    @classmethod
    def _quotas(cls, value):
        try:
            defaults = cls.model_fields["default_quotas"].default
            value = {**defaults, **(json.loads(value) if isinstance(value, str) else value)}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"default_quotas must be a JSON object: {exc}") from None
        unknown = set(value) - set(defaults)
        if unknown:
            raise ValueError(f"unknown quotas {sorted(unknown)}; known: {sorted(defaults)}")
        bad = {k: v for k, v in value.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"quotas are whole numbers from 0: {bad}")
        return value

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.root / 'tempering.db'}"

    @property
    def artifacts_dir(self) -> Path:
        """Uploaded files, stored under server-generated ids."""
        return self.root / "artifacts"

    @property
    def root(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def models_dir(self) -> Path:
        """Converted base models (safetensors + tokenizer), one folder per catalog id."""
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        """One folder per fine-tuning run: checkpoints, events, metrics and the final adapter."""
        return self.root / "runs"

    @property
    def catalog_file(self) -> Path:
        """User additions to the catalog (``tempering models add-path``)."""
        return self.root / "catalog.json"

    @property
    def calibration_file(self) -> Path:
        """Measured training throughput per model and device (``tempering calibrate``)."""
        return self.root / "calibration.json"


@lru_cache(maxsize=1)
def _cached() -> Settings:
    return Settings()


def get_settings() -> Settings:
    """The process-wide settings. Tests call ``reset_settings()`` after changing the environment."""
    return _cached()


def reset_settings() -> None:
    _cached.cache_clear()
