"""Wire models of webhooks: a project's registered URLs and their deliveries. The signing secret is in
the create response only."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="https:// (http:// only to hosts the server's "
                     "administrator allowed); never a loopback, private or link-local address unless allowed")
    events: list[str] = Field(min_length=1, max_length=20, description="Events to send: fine_tuning.job.succeeded, "
                              "fine_tuning.job.failed, fine_tuning.job.cancelled, eval.run.succeeded, "
                              "eval.run.failed, eval.run.canceled, deployment.created, deployment.deleted")


class WebhookObject(BaseModel):
    object: Literal["webhook"] = "webhook"
    id: str
    url: str
    events: list[str]
    created_at: int
    secret: str | None = Field(default=None, description="The signing secret (whsec_…): in the create response "
                               "only; store it now")


class WebhookDeliveryObject(BaseModel):
    object: Literal["webhook.delivery"] = "webhook.delivery"
    id: str
    webhook_id: str
    event_id: str
    event_type: str
    status: str = Field(description="pending, succeeded, failed (every try used) or dropped (webhook deleted)")
    attempts: int
    next_attempt_at: float | None
    last_status_code: int | None
    last_error: str | None
    created_at: int
    delivered_at: int | None
    attempt_log: list[dict[str, Any]] = Field(description="Every try: attempt, at, status_code, error, duration_ms")
    payload: dict[str, Any]

