"""``/v1/organization/usage/{completions,fine_tuning,hosting}`` and ``/v1/organization/costs``: the usage ledger
in OpenAI's bucketed shapes, over the projects the caller has a role in (``services.usage``). List parameters
are read repeated (``group_by=project_id&group_by=model``) or with brackets (``group_by[]=…``), as OpenAI's
clients send them; they are read from the query itself, not declared (OpenAPI cannot say both spellings), and
each route's description names them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol_usage import UsagePage
from tempering.services import usage as service
from tempering.services.access import Caller

router = APIRouter(tags=["usage"], responses=ERROR_RESPONSES)
ORG = "/v1/organization"

StartTime = Annotated[int, Query(description="Start of the range, Unix seconds (inclusive).")]
EndTime = Annotated[int | None, Query(description="End of the range, Unix seconds (exclusive); default: "
                                               "now (the current second included).")]
Width = Annotated[str, Query(description="Width of each bucket: 1m, 1h or 1d.")]
Limit = Annotated[int | None, Query(description="Buckets per page (1m: 60, up to 1440; 1h: 24, up to 168; "
                                                "1d: 7, up to 31; costs: 7, up to 180).")]
Page = Annotated[str | None, Query(description="The next_page of the previous answer.")]


def _listed(request: Request, name: str) -> list[str] | None:
    values = request.query_params.getlist(name) + request.query_params.getlist(name + "[]")
    return values or None


def _query(request: Request, start_time: int, end_time: int | None, bucket_width: str, limit: int | None,
           page: str | None) -> service.UsageQuery:
    return service.UsageQuery(start_time=start_time, end_time=end_time, bucket_width=bucket_width,
                              project_ids=_listed(request, "project_ids"),
                              group_by=_listed(request, "group_by") or [], models=_listed(request, "models"),
                              api_key_ids=_listed(request, "api_key_ids"), limit=limit, page=page)


def _usage(kind: str, request: Request, caller: Caller, session, q: service.UsageQuery) -> UsagePage:
    request.app.state.monitor.flush()  # the ledger holds every request answered so far
    return UsagePage(**service.usage_page(session, caller, kind, q, request.app.state.settings))


@router.get(ORG + "/usage/completions", response_model=UsagePage)
def completions_usage(request: Request, caller: CallerDep, session: SessionDep, start_time: StartTime,
                      end_time: EndTime = None, bucket_width: Width = "1d", limit: Limit = None,
                      page: Page = None) -> UsagePage:
    """Input and output tokens served by deployments, and requests, per bucket. Lists: `project_ids`,
    `models`, `api_key_ids`, `group_by` (`project_id`, `model`, `api_key_id`)."""
    return _usage("completions", request, caller, session,
                  _query(request, start_time, end_time, bucket_width, limit, page))


@router.get(ORG + "/usage/fine_tuning", response_model=UsagePage)
def fine_tuning_usage(request: Request, caller: CallerDep, session: SessionDep, start_time: StartTime,
                      end_time: EndTime = None, bucket_width: Width = "1d",
                      limit: Limit = None, page: Page = None) -> UsagePage:
    """Trained tokens of jobs that ended (succeeded, or cancelled mid-run), in the bucket they ended in.
    Lists: `project_ids`, `models`, `group_by` (`project_id`, `model`)."""
    return _usage("fine_tuning", request, caller, session,
                  _query(request, start_time, end_time, bucket_width, limit, page))


@router.get(ORG + "/usage/hosting", response_model=UsagePage)
def hosting_usage(request: Request, caller: CallerDep, session: SessionDep, start_time: StartTime,
                  end_time: EndTime = None, bucket_width: Width = "1d",
                  limit: Limit = None, page: Page = None) -> UsagePage:
    """Seconds deployments existed (creation to deletion, or to now), spread over the buckets. Lists:
    `project_ids`, `models`, `group_by` (`project_id`, `model`)."""
    return _usage("hosting", request, caller, session,
                  _query(request, start_time, end_time, bucket_width, limit, page))


@router.get(ORG + "/costs", response_model=UsagePage)
def costs(request: Request, caller: CallerDep, session: SessionDep, start_time: StartTime,
          end_time: EndTime = None, bucket_width: Width = "1d",
          limit: Limit = None, page: Page = None) -> UsagePage:
    """What the usage cost in USD, priced by the project's price table when it was recorded. Lists:
    `project_ids`, `group_by` (`project_id`, `line_item`)."""
    q = _query(request, start_time, end_time, bucket_width, limit, page)
    request.app.state.monitor.flush()
    return UsagePage(**service.costs_page(session, caller, q, request.app.state.settings))
