"""A project's quotas, resolved once: the server's defaults (``settings.default_quotas``), overridden by its
hub's (``hub.settings["default_quotas"]``), overridden by the project's own (``project.quotas``). A key absent
at one level falls through to the level below. Checking usage against them is the callers' (``jobs.queue``
for running jobs and trained tokens per day, ``services.quotas`` for stored bytes and deployments).

Values are whole numbers from 0 up; 0 allows nothing (no jobs, no deployments, no stored bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from tempering.errors import TemperingError
from tempering.store.models import Hub, Project

MAX_VALUE = 2**62


@dataclass(frozen=True)
class Quotas:
    """What one project may use."""

    concurrent_jobs: int  # fine-tuning jobs held by workers at once; more wait in ``queued``
    trained_tokens_per_day: int  # tokens × epochs of the jobs started in one UTC day
    stored_bytes: int  # bytes of the project's files (uploads and the files made from them)
    deployments: int  # live deployments


QUOTA_KEYS = tuple(f.name for f in fields(Quotas))


def check_quotas(values: dict | None, param: str = "quotas", *, allow_null: bool = True) -> dict:
    """``values`` checked: known keys, whole numbers from 0 (null removes an override where ``allow_null``);
    every problem at once."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise TemperingError(f"{param} must be an object of {', '.join(QUOTA_KEYS)}", param=param,
                             code="invalid_value")
    problems = []
    for key, value in values.items():
        if key not in QUOTA_KEYS:
            problems.append(f"{param}.{key}: not a quota (known: {', '.join(QUOTA_KEYS)})")
        elif value is None and allow_null:
            continue
        elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VALUE:
            problems.append(f"{param}.{key}: a whole number from 0 to {MAX_VALUE} is needed, got {value!r}")
    if problems:
        raise TemperingError("; ".join(problems), param=param, code="invalid_quota")
    return dict(values)


def server_defaults(defaults: dict | None = None) -> dict:
    from tempering.settings import get_settings

    return dict(defaults if defaults is not None else get_settings().default_quotas)


def effective_quotas(session, project_id: str, defaults: dict | None = None) -> Quotas:
    """The project's quotas: its own overrides, else its hub's ``default_quotas``, else the server's
    (``defaults``, by default ``settings.default_quotas``)."""
    merged = server_defaults(defaults)
    project = session.get(Project, project_id)
    hub = session.get(Hub, project.hub_id) if project is not None and project.hub_id else None
    for level in ((hub.settings or {}).get("default_quotas") if hub else None, project.quotas if project else None):
        if isinstance(level, dict):
            merged.update({k: v for k, v in level.items() if k in QUOTA_KEYS and isinstance(v, int)})
    return Quotas(**{k: int(merged[k]) for k in QUOTA_KEYS})
