"""Webhook events enqueued: one delivery row per subscribed webhook, added in the caller's unit of work, so an
event exists exactly when the change that causes it is committed (a rolled-back change sends nothing).

This is the store's part, so the layers where changes happen (``jobs`` for a job's final state,
``services`` for deployments) can enqueue without knowing how or when deliveries are sent
(``services.webhooks``). Event names and payloads are OpenAI's (``fine_tuning.job.succeeded``, …, with
``data: {"id": …}``), plus Tempering's deployment events.
"""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from tempering.store.models import Evaluation, Job, Webhook, WebhookDelivery, new_id, now

# OpenAI's fine-tuning and evaluation events (its eval runs spell "canceled"), then Tempering's own.
JOB_EVENTS = {"succeeded": "fine_tuning.job.succeeded", "failed": "fine_tuning.job.failed",
              "cancelled": "fine_tuning.job.cancelled"}
EVALUATION_EVENTS = {"succeeded": "eval.run.succeeded", "failed": "eval.run.failed",
                     "cancelled": "eval.run.canceled"}
DEPLOYMENT_EVENTS = ("deployment.created", "deployment.deleted")
EVENTS = (*JOB_EVENTS.values(), *EVALUATION_EVENTS.values(), *DEPLOYMENT_EVENTS)


def enqueue(session: Session, project_id: str, event_type: str, data: dict) -> list[WebhookDelivery]:
    """Add a delivery of one event to each live webhook of the project that subscribed to it."""
    if event_type not in EVENTS:
        raise ValueError(f"unknown webhook event {event_type!r}")
    hooks = session.scalars(select(Webhook).where(Webhook.project_id == project_id, Webhook.deleted_at.is_(None)))
    event_id, created = new_id("evt_"), now()
    payload = {"id": event_id, "object": "event", "type": event_type, "created_at": created, "data": data}
    out = []
    for hook in hooks:
        if event_type in (hook.events or ()):
            delivery = WebhookDelivery(webhook_id=hook.id, project_id=project_id, event_id=event_id,
                                       event_type=event_type, payload=payload, next_attempt_at=time.time(),
                                       status="pending", attempts=0, attempt_log=[], created_at=created)
            session.add(delivery)
            out.append(delivery)
    return out


def job_finished(session: Session, job: Job) -> list[WebhookDelivery]:
    """The event of a job that reached a final state (none for any other state)."""
    event_type = JOB_EVENTS.get(job.status)
    if event_type is None:
        return []
    return enqueue(session, job.project_id, event_type, {"id": job.id})


def evaluation_finished(session: Session, evaluation: Evaluation) -> list[WebhookDelivery]:
    event_type = EVALUATION_EVENTS.get(evaluation.status)
    if event_type is None:
        return []
    return enqueue(session, evaluation.project_id, event_type, {"id": evaluation.id})
