"""``/v1/organization/projects/{project_id}/webhooks``: register (the secret answered once), list, get,
delete; a webhook's deliveries. Owners only (``project.manage``); the rules are ``services.webhooks``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol import ListPage
from tempering.api.protocol_access import Deleted
from tempering.api.protocol_webhooks import WebhookCreate, WebhookDeliveryObject, WebhookObject
from tempering.services import webhooks as service
from tempering.store.models import Webhook, WebhookDelivery

router = APIRouter(prefix="/v1/organization/projects/{project_id}/webhooks", tags=["webhooks"],
                   responses=ERROR_RESPONSES)


def to_wire(row: Webhook, secret: str | None = None) -> WebhookObject:
    return WebhookObject(id=row.id, url=row.url, events=list(row.events), created_at=row.created_at, secret=secret)


def delivery_wire(d: WebhookDelivery) -> WebhookDeliveryObject:
    return WebhookDeliveryObject(id=d.id, webhook_id=d.webhook_id, event_id=d.event_id, event_type=d.event_type,
                                 status=d.status, attempts=d.attempts,
                                 next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
                                 last_status_code=d.last_status_code, last_error=d.last_error,
                                 created_at=d.created_at, delivered_at=d.delivered_at,
                                 attempt_log=list(d.attempt_log or []), payload=d.payload)


def _page(items: list) -> ListPage:
    return ListPage(data=items, first_id=items[0].id if items else None, last_id=items[-1].id if items else None)


@router.post("", response_model=WebhookObject)
def create_webhook(project_id: str, body: WebhookCreate, request: Request, caller: CallerDep,
                   session: SessionDep) -> WebhookObject:
    """Register a URL for some of the project's events; the answer carries the signing secret this once."""
    row, secret = service.create_webhook(session, caller, body.url, body.events, request.app.state.cipher,
                                         request.app.state.settings)
    return to_wire(row, secret)


@router.get("", response_model=ListPage[WebhookObject])
def list_webhooks(project_id: str, caller: CallerDep, session: SessionDep) -> ListPage[WebhookObject]:
    return _page([to_wire(r) for r in service.list_webhooks(session, caller.project_id)])


@router.get("/{webhook_id}", response_model=WebhookObject)
def get_webhook(project_id: str, webhook_id: str, caller: CallerDep, session: SessionDep) -> WebhookObject:
    return to_wire(service.get_webhook(session, caller.project_id, webhook_id))


@router.delete("/{webhook_id}", response_model=Deleted)
def delete_webhook(project_id: str, webhook_id: str, caller: CallerDep, session: SessionDep) -> Deleted:
    """Stop sending to a webhook; its pending deliveries are dropped, its delivery log kept."""
    service.delete_webhook(session, caller, webhook_id)
    return Deleted(object="webhook.deleted", id=webhook_id)


@router.get("/{webhook_id}/deliveries", response_model=ListPage[WebhookDeliveryObject])
def list_deliveries(project_id: str, webhook_id: str, caller: CallerDep, session: SessionDep,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> ListPage[WebhookDeliveryObject]:
    """The webhook's deliveries, newest first, each with every try."""
    return _page([delivery_wire(d) for d in service.deliveries(session, caller.project_id, webhook_id, limit)])
