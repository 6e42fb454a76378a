"""``/v1/deployments``: create, list, get, delete; a deployment's content filter policy, request log and
metrics. The rules live in ``services.deployments``; this router parses and renders."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol import ListPage
from tempering.api.protocol_serving import (
    ContentFilterUpdate,
    DeploymentCreate,
    DeploymentDeleted,
    DeploymentMetrics,
    DeploymentObject,
    EngineState,
    Percentiles,
    RequestLogEntry,
)
from tempering.services import deployments as service
from tempering.store.models import Deployment

router = APIRouter(prefix="/v1/deployments", tags=["deployments"], responses=ERROR_RESPONSES)


def to_wire(session, d: Deployment, settings, *, warnings: bool = False) -> DeploymentObject:
    policy = service.effective_policy(session, d, settings)
    return DeploymentObject(id=d.id, name=d.name, model=d.model, base_model=d.base_model, task=d.task,
                            content_filter=policy.enabled, content_filter_policy=policy,
                            max_concurrent_requests=d.max_concurrent_requests,
                            max_requests_per_1_minute=d.max_requests_per_1_minute,
                            max_tokens_per_1_minute=d.max_tokens_per_1_minute,
                            backend=d.backend, upstream_url=d.upstream_url, upstream_model=d.upstream_model,
                            quantization=service.quantization_of(d, settings), status=d.status, created_at=d.created_at,
                            warnings=service.gate_warnings(d) if warnings else [])


@router.post("", response_model=DeploymentObject)
def create_deployment(body: DeploymentCreate, request: Request, caller: CallerDep,
                      session: SessionDep) -> DeploymentObject:
    spec = service.DeploymentSpec(**body.model_dump(exclude={"content_filter_policy"}),
                                  content_filter_policy=body.content_filter_policy.model_dump()
                                  if body.content_filter_policy is not None else None)
    settings = request.app.state.settings
    return to_wire(session, service.create_deployment(session, caller.project_id, spec, settings), settings,
                   warnings=True)


@router.post("/{deployment_id}/content_filter", response_model=DeploymentObject)
def set_content_filter(deployment_id: str, body: ContentFilterUpdate, request: Request, caller: CallerDep,
                       session: SessionDep) -> DeploymentObject:
    """Change a deployment's content filter: off, its own policy, or (null) the default (its hub's, else the
    server's). The policy's categories must be ones the server's classifiers provide and its blocklists the
    project's."""
    settings = request.app.state.settings
    return to_wire(session, service.set_content_filter(session, caller.project_id, deployment_id, body.content_filter,
                                              body.content_filter_policy, settings), settings)


@router.get("", response_model=ListPage[DeploymentObject])
def list_deployments(request: Request, caller: CallerDep, session: SessionDep) -> ListPage[DeploymentObject]:
    settings = request.app.state.settings
    data = [to_wire(session, d, settings) for d in service.list_deployments(session, caller.project_id)]
    return ListPage[DeploymentObject](data=data, first_id=data[0].id if data else None,
                                      last_id=data[-1].id if data else None)


@router.get("/{deployment_id}/metrics", response_model=DeploymentMetrics)
def deployment_metrics(deployment_id: str, request: Request, caller: CallerDep, session: SessionDep,
                       since: Annotated[float | None, Query(description="Count requests from this time "
                                                            "(seconds since the epoch); default: all.")] = None,
                       ) -> DeploymentMetrics:
    request.app.state.monitor.flush()  # reads see every request answered so far
    m = service.metrics(session, caller.project_id, deployment_id, since)
    engine = service.engine_state(service.owned_deployment(session, caller.project_id, deployment_id),
                                  request.app.state.serving, request.app.state.settings)
    return DeploymentMetrics(**{**m.__dict__, "latency_ms": Percentiles(**m.latency_ms),
                                "time_to_first_token_ms": Percentiles(**m.time_to_first_token_ms)},
                             engine=EngineState(**engine) if engine is not None else None)


@router.get("/{deployment_id}/requests", response_model=ListPage[RequestLogEntry])
def deployment_requests(deployment_id: str, request: Request, caller: CallerDep, session: SessionDep,
                        limit: Annotated[int, Query(description="Page size (1 to 1000), newest first")] = 100,
                        after: Annotated[str | None, Query(description="The id of the last entry of the "
                                                                        "previous page")] = None,
                        ) -> ListPage[RequestLogEntry]:
    request.app.state.monitor.flush()
    page = service.request_log(session, caller.project_id, deployment_id, after=after, limit=limit)
    data = [RequestLogEntry(id=f"req-{r.seq}", created_at=r.created_at, endpoint=r.endpoint, adapter=r.adapter,
                            stream=r.stream, status=r.status, error_code=r.error_code, latency_ms=r.latency_ms,
                            time_to_first_token_ms=r.ttft_ms, prompt_tokens=r.prompt_tokens,
                            completion_tokens=r.completion_tokens, filtered=r.filtered,
                            filtered_categories=r.filtered_categories) for r in page.rows]
    return ListPage[RequestLogEntry](data=data, has_more=page.has_more, first_id=data[0].id if data else None,
                                     last_id=data[-1].id if data else None)


@router.get("/{deployment_id}", response_model=DeploymentObject)
def get_deployment(deployment_id: str, request: Request, caller: CallerDep, session: SessionDep) -> DeploymentObject:
    return to_wire(session, service.owned_deployment(session, caller.project_id, deployment_id),
                   request.app.state.settings, warnings=True)


@router.delete("/{deployment_id}", response_model=DeploymentDeleted)
def delete_deployment(deployment_id: str, request: Request, caller: CallerDep,
                      session: SessionDep) -> DeploymentDeleted:
    deployment = service.delete_deployment(session, caller.project_id, deployment_id, request.app.state.settings)
    return DeploymentDeleted(id=deployment.id)
