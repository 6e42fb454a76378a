"""Usage and costs read back from the ledger (``store.usage``) in OpenAI's bucketed shapes: time buckets of
1 minute, hour or day (UTC-aligned) from ``start_time``, each with its results grouped as asked, paged by
``limit`` buckets and a ``next_page`` cursor.

Three usage kinds: ``completions`` (input and output tokens served, per deployment request; OpenAI's own
result), ``fine_tuning`` (trained tokens of jobs that ended) and ``hosting`` (seconds deployments existed,
spread over the buckets they overlap; a live deployment counts up to now, priced at today's table). Costs
sum the ledger's ``cost`` (priced when the row was written) and the live deployments' hosting so far.

The projects covered are those the caller has a role in (``services.projects.projects_of``), optionally
narrowed by ``project_ids``; who may call is decided before (any signed-in caller).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import BigInteger, func, literal_column, select

from tempering.errors import TemperingError
from tempering.services.access import Caller
from tempering.services.projects import projects_of
from tempering.store import usage
from tempering.store.models import Deployment, UsageRecord

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
# bucket_width → (default limit, most buckets a page may hold): OpenAI's
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
COST_LIMITS = (7, 180)
LATEST = 10**11  # the latest time a question may name (the year 5138): the database's integers hold it
GROUPS = {"completions": ("project_id", "model", "api_key_id"), "fine_tuning": ("project_id", "model"),
          "hosting": ("project_id", "model"), "costs": ("project_id", "line_item")}
KINDS = ("completions", "fine_tuning", "hosting")


@dataclass
class UsageQuery:
    """One usage or costs question, as OpenAI's query parameters ask it."""

    start_time: int
    end_time: int | None = None
    bucket_width: str = "1d"
    project_ids: list[str] | None = None
    group_by: list[str] = field(default_factory=list)
    models: list[str] | None = None
    api_key_ids: list[str] | None = None
    limit: int | None = None
    page: str | None = None


@dataclass
class Window:
    """The buckets of one page: ``count`` buckets of ``width`` seconds from ``first``, ending by ``end``."""

    first: int
    width: int
    count: int
    end: int
    next_page: str | None

    @property
    def stop(self) -> int:
        return min(self.end, self.first + self.count * self.width)

    def starts(self) -> list[int]:
        return [self.first + i * self.width for i in range(self.count)]


def _cursor(start: int) -> str:
    return base64.urlsafe_b64encode(f"bucket:{start}".encode()).decode()


def _from_cursor(page: str) -> int:
    try:
        text = base64.urlsafe_b64decode(page.encode()).decode()
        if text.startswith("bucket:"):
            return int(text.removeprefix("bucket:"))
    except (binascii.Error, UnicodeError, ValueError):
        pass
    raise TemperingError("page is not a next_page this server gave", param="page", code="invalid_value")


def window(q: UsageQuery, *, costs: bool = False, now: int | None = None) -> Window:
    """The page's buckets, every problem of the query at once."""
    problems = []
    if q.bucket_width not in WIDTHS:
        problems.append(("bucket_width", f"bucket_width is one of {', '.join(WIDTHS)}"))
    width = WIDTHS.get(q.bucket_width, 86400)
    default, most = COST_LIMITS if costs else LIMITS.get(q.bucket_width, (7, 31))
    limit = default if q.limit is None else q.limit
    if not 1 <= limit <= most:
        problems.append(("limit", f"limit is 1 to {most} buckets for bucket_width {q.bucket_width}"))
    # end_time is exclusive; by default the current second is in: the ledger's times are whole seconds (rounded
    # down), so a job charged a moment ago, within this second, must count
    end = q.end_time if q.end_time is not None else (now or int(time.time())) + 1
    if not 0 <= q.start_time < end <= LATEST:
        problems.append(("start_time", f"start_time is a Unix time in seconds before end_time (0 to {LATEST})"))
    if problems:
        raise TemperingError("; ".join(p for _, p in problems), param=problems[0][0], code="invalid_value")
    first = q.start_time - q.start_time % width
    if q.page:
        first = _from_cursor(q.page)
        if not 0 <= first < end or first % width:
            raise TemperingError("page is not a next_page of this question", param="page", code="invalid_value")
    count = max(0, min(limit, -(-(end - first) // width)))
    after = first + count * width
    return Window(first, width, count, end, _cursor(after) if after < end else None)


def _projects(session, caller: Caller, wanted: list[str] | None) -> list[str]:
    mine = [project.id for project, _ in projects_of(session, caller)]
    return [p for p in mine if p in set(wanted)] if wanted else mine


def _check_groups(kind: str, group_by: list[str]) -> None:
    wrong = [g for g in group_by if g not in GROUPS[kind]]
    if wrong:
        raise TemperingError(f"group_by {', '.join(wrong)} is not one of {', '.join(GROUPS[kind])} here",
                             param="group_by", code="invalid_value")


def _token_sums(session, kinds: tuple[str, ...], projects: list[str], w: Window, q: UsageQuery):
    """Per bucket, project, model, key and kind: the ledger's token rows summed in the database."""
    # the bucket's integers inlined (they are ints): PostgreSQL matches GROUP BY to SELECT only when the two
    # expressions are identical, which two bound parameters of the same value are not
    first, width = literal_column(str(int(w.first)), BigInteger), literal_column(str(int(w.width)), BigInteger)
    bucket = ((UsageRecord.created_at - first) // width).label("bucket")
    query = (select(bucket, UsageRecord.project_id, UsageRecord.model, UsageRecord.key_id, UsageRecord.kind,
                    func.sum(UsageRecord.input_tokens), func.sum(UsageRecord.output_tokens),
                    func.sum(UsageRecord.requests), func.sum(UsageRecord.trained_tokens),
                    func.count(func.distinct(UsageRecord.job_id)), func.sum(UsageRecord.cost))
             .where(UsageRecord.kind.in_(kinds), UsageRecord.project_id.in_(projects),
                    UsageRecord.created_at >= w.first, UsageRecord.created_at < w.stop)
             .group_by(bucket, UsageRecord.project_id, UsageRecord.model, UsageRecord.key_id, UsageRecord.kind))
    if q.models:
        query = query.where(UsageRecord.model.in_(q.models))
    if q.api_key_ids:
        query = query.where(UsageRecord.key_id.in_(q.api_key_ids))
    return session.execute(query).all()


@dataclass
class Stay:
    """A deployment's time: from ``start`` to ``end``, priced ``rate`` USD a second."""

    project_id: str
    model: str
    deployment_id: str
    start: int
    end: int
    rate: float


def _stays(session, projects: list[str], w: Window, q: UsageQuery, now: int, settings) -> list[Stay]:
    """Deployments' time overlapping the page: deleted ones from the ledger (priced then), live ones up to now
    (priced by today's table)."""
    rows = session.scalars(select(UsageRecord).where(
        UsageRecord.kind == "hosting", UsageRecord.project_id.in_(projects),
        UsageRecord.started_at < w.stop, UsageRecord.created_at > w.first))
    stays = [Stay(r.project_id, r.model, r.deployment_id or "", r.started_at, r.created_at,
                  r.cost / r.hosting_seconds if r.hosting_seconds else 0.0) for r in rows]
    live = session.scalars(select(Deployment).where(
        Deployment.project_id.in_(projects), Deployment.deleted_at.is_(None), Deployment.created_at < w.stop))
    prices: dict[tuple[str, str], float] = {}
    for d in live:
        key = (d.project_id, d.base_model)
        if key not in prices:
            prices[key] = usage.prices_for(session, *key, settings).hosting_per_hour / 3600
        stays.append(Stay(d.project_id, d.base_model, d.id, d.created_at, now, prices[key]))
    return [s for s in stays if not q.models or s.model in q.models]


def _spread(stay: Stay, w: Window):
    """(bucket index, seconds) of a stay over the page's buckets."""
    for index, start in enumerate(w.starts()):
        seconds = min(stay.end, start + w.width) - max(stay.start, start)
        if seconds > 0:
            yield index, seconds


def _group(values: dict, group_by: list[str]) -> tuple:
    return tuple((name, values[name]) for name in group_by)


def _page(w: Window, sums: dict, result) -> dict:
    """OpenAI's page of buckets; ``sums`` maps (bucket index, group) to what ``result`` turns into a result."""
    data = []
    for index, start in enumerate(w.starts()):
        results = [result(dict(group), values) for (i, group), values in sorted(sums.items(), key=_order)
                   if i == index]
        data.append({"object": "bucket", "start_time": start, "end_time": start + w.width, "results": results})
    return {"object": "page", "data": data, "has_more": w.next_page is not None, "next_page": w.next_page}


def _order(item) -> tuple:
    (index, group), _ = item
    return index, tuple(str(v) for _, v in group)


def usage_page(session, caller: Caller, kind: str, q: UsageQuery, settings=None, now: int | None = None) -> dict:
    """``GET /v1/organization/usage/{kind}``: one page of buckets."""
    _check_groups(kind, q.group_by)
    now = now or int(time.time())
    w = window(q, now=now)
    projects = _projects(session, caller, q.project_ids)
    sums: dict = defaultdict(lambda: defaultdict(float))
    if kind == "hosting":
        deployments: dict = defaultdict(set)
        for stay in _stays(session, projects, w, q, now, settings):
            for index, seconds in _spread(stay, w):
                key = (index, _group({"project_id": stay.project_id, "model": stay.model}, q.group_by))
                sums[key]["hosting_seconds"] += seconds
                deployments[key].add(stay.deployment_id)
        for key, ids in deployments.items():
            sums[key]["num_deployments"] = len(ids)
        return _page(w, sums, lambda group, v: _hosting_result(group, v))
    ledger_kind = "inference" if kind == "completions" else "training"
    for bucket, project_id, model, key_id, _, inp, out, requests, trained, jobs, _ in _token_sums(
            session, (ledger_kind,), projects, w, q):
        key = (int(bucket), _group({"project_id": project_id, "model": model, "api_key_id": key_id}, q.group_by))
        values = sums[key]  # PostgreSQL's sums of BIGINT are NUMERIC (Decimal): ints here
        values["input_tokens"] += int(inp or 0)
        values["output_tokens"] += int(out or 0)
        values["num_model_requests"] += int(requests or 0)
        values["trained_tokens"] += int(trained or 0)
        values["num_jobs"] += int(jobs or 0)
    if kind == "completions":
        return _page(w, sums, _completions_result)
    return _page(w, sums, _fine_tuning_result)


def _completions_result(group: dict, v: dict) -> dict:
    return {"object": "organization.usage.completions.result", "input_tokens": int(v["input_tokens"]),
            "output_tokens": int(v["output_tokens"]), "input_cached_tokens": 0, "input_audio_tokens": 0,
            "output_audio_tokens": 0, "num_model_requests": int(v["num_model_requests"]),
            "project_id": group.get("project_id"), "user_id": None, "api_key_id": group.get("api_key_id"),
            "model": group.get("model"), "batch": None}


def _fine_tuning_result(group: dict, v: dict) -> dict:
    return {"object": "organization.usage.fine_tuning.result", "trained_tokens": int(v["trained_tokens"]),
            "num_jobs": int(v["num_jobs"]), "project_id": group.get("project_id"), "model": group.get("model")}


def _hosting_result(group: dict, v: dict) -> dict:
    return {"object": "organization.usage.hosting.result", "hosting_seconds": int(v["hosting_seconds"]),
            "num_deployments": int(v["num_deployments"]), "project_id": group.get("project_id"),
            "model": group.get("model")}


def line_item(model: str, kind: str) -> str:
    """A cost's line item: the base model and what was used ("smollm2-135m-instruct, training")."""
    return f"{model}, {kind}"


def costs_page(session, caller: Caller, q: UsageQuery, settings=None, now: int | None = None) -> dict:
    """``GET /v1/organization/costs``: one page of buckets of USD amounts."""
    _check_groups("costs", q.group_by)
    now = now or int(time.time())
    w = window(q, costs=True, now=now)
    projects = _projects(session, caller, q.project_ids)
    sums: dict = defaultdict(lambda: defaultdict(float))
    for bucket, project_id, model, _, kind, *_, cost in _token_sums(session, ("training", "inference"),
                                                                    projects, w, q):
        group = _group({"project_id": project_id, "line_item": line_item(model, kind)}, q.group_by)
        sums[(int(bucket), group)]["value"] += float(cost or 0.0)
    for stay in _stays(session, projects, w, q, now, settings):
        for index, seconds in _spread(stay, w):
            group = _group({"project_id": stay.project_id, "line_item": line_item(stay.model, "hosting")},
                           q.group_by)
            sums[(index, group)]["value"] += seconds * stay.rate
    return _page(w, sums, _cost_result)


def _cost_result(group: dict, v: dict) -> dict:
    return {"object": "organization.costs.result", "amount": {"value": round(v["value"], 6), "currency": "usd"},
            "line_item": group.get("line_item"), "project_id": group.get("project_id")}
