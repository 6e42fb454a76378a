"""``/v1/deployments``: make a base model, a fine-tuned model or a checkpoint callable by name; list, get,
delete; its request log and metrics. Creating a deployment loads nothing: the engine loads the base model
and the adapter on the first request, so deployments survive a restart by being rows."""

from __future__ import annotations

import statistics
import time
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from tempering.api.deps import CallerDep, SessionDep
from tempering.api.errors import ERROR_RESPONSES, APIError, is_id, not_found
from tempering.api.protocol import ListPage
from tempering.api.protocol_serving import (
    DeploymentCreate,
    DeploymentDeleted,
    DeploymentMetrics,
    DeploymentObject,
    Percentiles,
    RequestLogEntry,
)
from tempering.store.models import Deployment, DeploymentRequest, Job

router = APIRouter(prefix="/v1/deployments", tags=["deployments"], responses=ERROR_RESPONSES)


def to_wire(d: Deployment) -> DeploymentObject:
    return DeploymentObject(id=d.id, name=d.name, model=d.model, base_model=d.base_model, task=d.task,
                            content_filter=d.content_filter, max_concurrent_requests=d.max_concurrent_requests,
                            backend=d.backend, upstream_url=d.upstream_url, upstream_model=d.upstream_model,
                            status=d.status, created_at=d.created_at)


def live(session, project_id: str):
    return select(Deployment).where(Deployment.project_id == project_id, Deployment.deleted_at.is_(None))


def find_deployment(session, project_id: str, ident: str) -> Deployment | None:
    """A live deployment of the project by id, by name, or (OpenAI's way of calling) by the model it serves."""
    query = live(session, project_id)
    if is_id(ident):
        found = session.scalars(query.where(Deployment.id == ident)).first()
        if found is not None:
            return found
    return (session.scalars(query.where(Deployment.name == ident)).first()
            or session.scalars(query.where(Deployment.model == ident).order_by(Deployment.created_at)).first())


def owned_deployment(session, caller, ident: str) -> Deployment:
    found = find_deployment(session, caller.project_id, ident) if "\x00" not in ident else None
    if found is None:
        raise not_found("deployment", ident.replace("\x00", "\\x00"), "deployment_id")
    return found


def _check_owner(session, caller, fine_tuned_model: str) -> None:
    """A fine-tuned model made by another project's job is not this project's to deploy. Models trained
    outside the server (``tempering tune`` into the same home) belong to no project and may be deployed."""
    jobs = session.scalars(select(Job).where(Job.fine_tuned_model == fine_tuned_model)).all()
    if jobs and all(j.project_id != caller.project_id for j in jobs):
        raise not_found("model", fine_tuned_model, "model")


@router.post("", response_model=DeploymentObject)
def create_deployment(body: DeploymentCreate, caller: CallerDep, session: SessionDep) -> DeploymentObject:
    from tempering.catalog import get_card
    from tempering.errors import ModelNotFoundError
    from tempering.evaluate import check_deploy_gate, targets

    if "\x00" in body.model:
        raise not_found("model", body.model.replace("\x00", "\\x00"), "model")
    try:
        target = targets.resolve(body.model)  # ModelNotFoundError → 404 naming the accepted forms
    except ModelNotFoundError:
        if body.backend != "upstream" or not body.base_model:
            raise
        # a model only the upstream has (vLLM's --lora-modules): prompts are built with its base's template
        target = targets.Target(body.model, "upstream", get_card(body.base_model).id)
    fine_tuned = None
    if target.kind in ("fine-tuned", "checkpoint"):
        fine_tuned = target.name.split("@", 1)[0]
        _check_owner(session, caller, fine_tuned)
        if target.kind == "fine-tuned":
            check_deploy_gate(target.name, body.force)  # DeployRefusedError → 400 with the numbers
    if body.backend == "upstream" and not body.upstream_url:
        raise APIError(400, "backend 'upstream' needs upstream_url (the OpenAI-compatible server's …/v1 URL)",
                       param="upstream_url", code="invalid_value")
    if body.backend == "upstream" and target.task != "chat":
        raise APIError(400, "only chat models can be served by an upstream backend", param="backend",
                       code="invalid_value")
    name = body.name or target.name
    if len(name) > 240:
        raise APIError(400, "the model id is too long to be the deployment's name; pass a name", param="name")
    if session.scalars(live(session, caller.project_id).where(Deployment.name == name)).first() is not None:
        raise APIError(409, f"a deployment named {name!r} already exists in this project; pick another name or "
                       "delete it first", param="name", code="deployment_exists")
    deployment = Deployment(project_id=caller.project_id, name=name, model=target.name, fine_tuned_model=fine_tuned,
                            base_model=target.base_model, task=target.task, content_filter=body.content_filter,
                            max_concurrent_requests=body.max_concurrent_requests, backend=body.backend,
                            upstream_url=body.upstream_url,
                            upstream_model=body.upstream_model or (target.name if body.backend == "upstream" else None))
    session.add(deployment)
    session.flush()
    return to_wire(deployment)


@router.get("", response_model=ListPage[DeploymentObject])
def list_deployments(caller: CallerDep, session: SessionDep) -> ListPage[DeploymentObject]:
    rows = session.scalars(live(session, caller.project_id).order_by(Deployment.created_at, Deployment.id)).all()
    data = [to_wire(d) for d in rows]
    return ListPage[DeploymentObject](data=data, first_id=data[0].id if data else None,
                                      last_id=data[-1].id if data else None)


@router.get("/{deployment_id}/metrics", response_model=DeploymentMetrics)
def deployment_metrics(deployment_id: str, caller: CallerDep, session: SessionDep,
                       since: Annotated[float | None, Query(description="Count requests from this time "
                                                            "(seconds since the epoch); default: all.")] = None,
                       ) -> DeploymentMetrics:
    deployment = owned_deployment(session, caller, deployment_id)
    query = select(DeploymentRequest).where(DeploymentRequest.deployment_id == deployment.id)
    if since is not None:
        query = query.where(DeploymentRequest.created_at >= since)
    rows = session.scalars(query).all()
    ok = [r for r in rows if r.status < 400]
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
    seconds = sum(r.latency_ms for r in ok) / 1000
    return DeploymentMetrics(
        deployment=deployment.id, since=since, requests=len(rows), errors=len(rows) - len(ok), by_status=by_status,
        latency_ms=percentiles([r.latency_ms for r in ok]),
        time_to_first_token_ms=percentiles([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        prompt_tokens=sum(r.prompt_tokens for r in rows), completion_tokens=sum(r.completion_tokens for r in rows),
        tokens_per_second=sum(r.completion_tokens for r in ok) / seconds if seconds > 0 else None)


@router.get("/{deployment_id}/requests", response_model=ListPage[RequestLogEntry])
def deployment_requests(deployment_id: str, caller: CallerDep, session: SessionDep,
                        limit: Annotated[int, Query(description="Page size (1 to 1000), newest first")] = 100,
                        after: Annotated[str | None, Query(description="The id of the last entry of the "
                                                                        "previous page")] = None,
                        ) -> ListPage[RequestLogEntry]:
    deployment = owned_deployment(session, caller, deployment_id)
    limit = min(max(limit, 1), 1000)
    query = select(DeploymentRequest).where(DeploymentRequest.deployment_id == deployment.id)
    if after is not None:
        seq = after.removeprefix("req-")
        if not seq.isdigit() or len(seq) > 18:
            raise not_found("request log entry", after, "after")
        query = query.where(DeploymentRequest.seq < int(seq))
    rows = session.scalars(query.order_by(DeploymentRequest.seq.desc()).limit(limit + 1)).all()
    data = [RequestLogEntry(id=f"req-{r.seq}", created_at=r.created_at, endpoint=r.endpoint, adapter=r.adapter,
                            stream=r.stream, status=r.status, error_code=r.error_code, latency_ms=r.latency_ms,
                            time_to_first_token_ms=r.ttft_ms, prompt_tokens=r.prompt_tokens,
                            completion_tokens=r.completion_tokens) for r in rows[:limit]]
    return ListPage[RequestLogEntry](data=data, has_more=len(rows) > limit, first_id=data[0].id if data else None,
                                     last_id=data[-1].id if data else None)


@router.get("/{deployment_id}", response_model=DeploymentObject)
def get_deployment(deployment_id: str, caller: CallerDep, session: SessionDep) -> DeploymentObject:
    return to_wire(owned_deployment(session, caller, deployment_id))


@router.delete("/{deployment_id}", response_model=DeploymentDeleted)
def delete_deployment(deployment_id: str, caller: CallerDep, session: SessionDep) -> DeploymentDeleted:
    deployment = owned_deployment(session, caller, deployment_id)
    deployment.deleted_at = int(time.time())  # the row stays: its request log outlives it
    return DeploymentDeleted(id=deployment.id)


def deployments_of_model(session, model_id: str) -> list[Deployment]:
    """Live deployments serving a fine-tuned model or any of its checkpoints (in any project)."""
    return list(session.scalars(select(Deployment).where(Deployment.fine_tuned_model == model_id,
                                                         Deployment.deleted_at.is_(None))))


def percentiles(values: list[float]) -> Percentiles:
    if not values:
        return Percentiles()
    if len(values) == 1:
        return Percentiles(p50=values[0], p95=values[0])
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return Percentiles(p50=statistics.median(values), p95=cuts[18])

