"""The usage ledger's writers and the price table they charge by.

A row is written where the usage happens, in the same unit of work as the change that ends it: a job's
status change to ``succeeded`` or ``cancelled`` (``jobs.runner``, ``services.jobs``), a deployment's
deletion (``services.deployments``), the request log's batch (``services.monitoring``). Azure's billing rules:
queue time, failed jobs and jobs cancelled before training started are free; a job cancelled mid-run is
charged the tokens it trained (the ``tokens`` of its step events: a step redone after a crash is counted
once, as the runner keeps one event per step).

The price table (see docs/usage.md) is per base model (catalog id), ``"*"`` for any other: a hub's
``settings["prices"]`` first, then the server's defaults (``Settings.price_per_1k_*`` and
``price_per_hosting_hour``). Lives in ``store`` so that the runner, the services and the estimate all charge
by the same table. Knows nothing about HTTP or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tempering.errors import TemperingError
from tempering.store.models import Deployment, Hub, Job, JobEvent, Project, UsageRecord, now

KINDS = ("training", "hosting", "inference")
# a price table entry's fields → the server-wide default each falls back to (a Settings field)
PRICE_FIELDS = {
    "training_per_1k_tokens": "price_per_1k_training_tokens",
    "hosting_per_hour": "price_per_hosting_hour",
    "input_per_1k_tokens": "price_per_1k_input_tokens",
    "output_per_1k_tokens": "price_per_1k_output_tokens",
}


@dataclass(frozen=True)
class Prices:
    """What one base model costs, in USD."""

    training_per_1k_tokens: float = 0.0
    hosting_per_hour: float = 0.0
    input_per_1k_tokens: float = 0.0
    output_per_1k_tokens: float = 0.0


def check_prices(table) -> dict:
    """A hub's ``prices`` setting as given: ``{model or "*": {field: a number ≥ 0}}``, every problem named."""
    problems = []
    if not isinstance(table, dict):
        raise TemperingError('settings.prices is an object: {"<catalog id or *>": {"training_per_1k_tokens": '
                             '0.002, …}}', param="settings.prices", code="invalid_prices")
    for model, entry in table.items():
        if not isinstance(entry, dict):
            problems.append(f"prices[{model!r}] is not an object")
            continue
        for name, value in entry.items():
            if name not in PRICE_FIELDS:
                problems.append(f"prices[{model!r}].{name} is not a price (one of {', '.join(PRICE_FIELDS)})")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
                problems.append(f"prices[{model!r}].{name} is not a number from 0")
    if problems:
        raise TemperingError("; ".join(problems), param="settings.prices", code="invalid_prices")
    return table


def price_table(hub_settings: dict | None, model: str, settings=None) -> Prices:
    """The prices of ``model`` under a hub's settings (None: the server's defaults alone). Each field: the
    hub's entry for the model, the hub's ``"*"``, the server's entry for the model, the server's ``"*"``, 0."""
    if settings is None:
        from tempering.settings import get_settings

        settings = get_settings()
    hub = (hub_settings or {}).get("prices") or {}
    values = {}
    for name, default in PRICE_FIELDS.items():
        server = getattr(settings, default)
        for source in ((hub.get(model) or {}).get(name), (hub.get("*") or {}).get(name), server.get(model),
                       server.get("*")):
            if source is not None:
                values[name] = float(source)
                break
    return Prices(**values)


def hub_settings(session: Session, project_id: str) -> dict | None:
    """The settings of a project's hub (its price table); None for a project in no hub."""
    project = session.get(Project, project_id)
    hub = session.get(Hub, project.hub_id) if project is not None and project.hub_id else None
    return hub.settings if hub is not None else None


def prices_for(session: Session, project_id: str, model: str, settings=None) -> Prices:
    """The prices of ``model`` in a project: its hub's table over the server's defaults."""
    return price_table(hub_settings(session, project_id), model, settings)


def trained_so_far(session: Session, job_id: str) -> int:
    """Tokens a job has trained: the sum of its step events' ``tokens`` (one event per step, steps redone
    after a resume replace theirs)."""
    rows = session.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics"))
    return sum(int((data or {}).get("tokens") or 0) for data in rows)


def charge_training(session: Session, job: Job, model: str, trained_tokens: int, settings=None) -> UsageRecord | None:
    """The ledger row of a job that ended having trained ``trained_tokens`` (none for 0, or when the job is
    charged already); in the caller's session, so it commits with the job's status."""
    if trained_tokens <= 0 or session.scalars(select(UsageRecord.seq).where(
            UsageRecord.job_id == job.id, UsageRecord.kind == "training")).first() is not None:
        return None
    prices = prices_for(session, job.project_id, model, settings)
    row = UsageRecord(project_id=job.project_id, kind="training", model=model, job_id=job.id,
                      started_at=job.started_at or now(), trained_tokens=trained_tokens,
                      cost=trained_tokens / 1000 * prices.training_per_1k_tokens)
    session.add(row)
    return row


def hosting_cost(seconds: float, prices: Prices) -> float:
    return seconds / 3600 * prices.hosting_per_hour


def charge_hosting(session: Session, deployment: Deployment, ended_at: int, settings=None) -> UsageRecord:
    """The ledger row of a deployment deleted at ``ended_at``: its time from creation, at the hosting price."""
    seconds = max(0, ended_at - deployment.created_at)
    prices = prices_for(session, deployment.project_id, deployment.base_model, settings)
    row = UsageRecord(project_id=deployment.project_id, kind="hosting", model=deployment.base_model,
                      deployment_id=deployment.id, started_at=deployment.created_at, created_at=ended_at,
                      hosting_seconds=seconds, cost=hosting_cost(seconds, prices))
    session.add(row)
    return row


def inference_row(prices: Prices, *, project_id: str, model: str, deployment_id: str, key_id: str | None,
                  created_at: float, input_tokens: int, output_tokens: int) -> UsageRecord:
    """The ledger row of one served request (the request log's writer adds it beside the log row)."""
    cost = input_tokens / 1000 * prices.input_per_1k_tokens + output_tokens / 1000 * prices.output_per_1k_tokens
    return UsageRecord(project_id=project_id, kind="inference", model=model, deployment_id=deployment_id,
                       key_id=key_id, created_at=int(created_at), started_at=int(created_at),
                       input_tokens=input_tokens, output_tokens=output_tokens, requests=1, cost=cost)
