"""A project's quotas held against what it uses, for the things a caller creates: stored bytes (uploads and the
files made from them) and live deployments. The quotas themselves are resolved by
``store.quotas.effective_quotas``; running jobs and trained tokens per day are the job queue's
(``jobs.queue``), per-deployment requests and tokens per minute the serving path's (``services.ratelimits``).

An upload is held against the room left before its body is read (its declared length), as its bytes arrive
(the store's writer stops at the room left), and once more in the transaction that registers it, so two
uploads racing for the last bytes cannot both be kept.
"""

from __future__ import annotations

from sqlalchemy import func, select

from tempering.errors import TemperingError
from tempering.services.deployments import live
from tempering.store.models import File
from tempering.store.quotas import effective_quotas

CODE = "quota_exceeded"


def stored_bytes(session, project_id: str) -> int:
    """Bytes of the project's files (deleted ones no longer count)."""
    return int(session.scalar(select(func.coalesce(func.sum(File.bytes), 0))
                              .where(File.project_id == project_id, File.deleted.is_(False))))


def stored_bytes_room(db, project_id: str) -> tuple[int, int]:
    """(bytes the project may still store, its stored_bytes quota)."""
    with db.session(write=False) as session:
        quota = effective_quotas(session, project_id).stored_bytes
        return max(0, quota - stored_bytes(session, project_id)), quota


def stored_bytes_exceeded(size: int | None, quota: int, used: int | None = None) -> TemperingError:
    """The error of an upload that would pass the project's stored_bytes quota (413)."""
    what = f"{size:,} more bytes" if size is not None else "the upload"
    held = f" ({used:,} stored)" if used is not None else ""
    return TemperingError(f"storing {what} would pass the project's stored_bytes quota of {quota:,} bytes{held}; "
                          "delete files or ask an Owner to raise the quota", param="file", code=CODE,
                          kind="too_large")


def check_stored_bytes(session, project_id: str, incoming: int) -> None:
    """Refuse ``incoming`` new bytes past the project's stored_bytes quota (in the registering transaction)."""
    quota = effective_quotas(session, project_id).stored_bytes
    used = stored_bytes(session, project_id)
    if used + incoming > quota:
        raise stored_bytes_exceeded(incoming, quota, used)


def check_deployment_count(session, project_id: str) -> None:
    """Refuse a new deployment past the project's deployments quota (429)."""
    quota = effective_quotas(session, project_id).deployments
    count = session.scalar(select(func.count()).select_from(live(project_id).subquery()))
    if count >= quota:
        raise TemperingError(f"the project has {count} live deployment(s) and its deployments quota is {quota}; "
                             "delete one or ask an Owner to raise the quota", param="model", code=CODE,
                             kind="rate_limited")
