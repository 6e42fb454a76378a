"""Cursor pagination, written once: every list the API and the portal show pages through one of these.

Two cursors exist: a row (lists ordered newest first by creation time, ties broken by id, as OpenAI's lists
are) and a sequence number behind an id such as ``ftevent-123`` or ``req-45`` (append-only logs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tempering.errors import TemperingError, not_found

MAX_LIMIT = 100


@dataclass
class Page:
    rows: list
    has_more: bool


def clamp(limit: int, maximum: int = MAX_LIMIT) -> int:
    """Page sizes outside 1 to ``maximum`` are clamped, not refused (OpenAI's behaviour)."""
    return max(1, min(limit, maximum))


def newest_first(session, query, table, anchor, limit: int) -> Page:
    """Rows of ``query`` newest first (``created_at``, then ``id``), after the row ``anchor`` if given."""
    limit = clamp(limit)
    if anchor is not None:
        query = query.where((table.created_at < anchor.created_at) |
                            ((table.created_at == anchor.created_at) & (table.id < anchor.id)))
    rows = session.scalars(query.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)).all()
    return Page(list(rows[:limit]), len(rows) > limit)


def after_seq(session, query, seq_column, after: str | None, prefix: str, limit: int, kind: str,
              maximum: int = 1000, strict: bool = False) -> Page:
    """Rows of ``query`` by ``seq_column`` descending, after the one whose id is ``prefix`` + its number.
    A cursor that is not such an id is refused (``strict``) or names no row (404)."""
    limit = clamp(limit, maximum)
    if after is not None:
        match = re.fullmatch(re.escape(prefix) + r"(\d{1,18})", after)  # 18 digits fit a 64-bit integer
        if match is None:
            if strict:
                raise TemperingError(f"after must be an id of the form {prefix}<number>, got {after[:80]!r}",
                                     param="after", code="invalid_value")
            raise not_found(kind, after[:80], "after")
        query = query.where(seq_column < int(match.group(1)))
    rows = session.scalars(query.order_by(seq_column.desc()).limit(limit + 1)).all()
    return Page(list(rows[:limit]), len(rows) > limit)
