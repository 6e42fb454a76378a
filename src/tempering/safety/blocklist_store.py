"""Project blocklists in the database: create, add or update items, list, remove, delete, and loading
them (compiled, cached) for the filter. The API router, the CLI (through the API) and the chat service
share these functions; nothing here knows HTTP.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tempering.errors import InvalidConfigError, TemperingError
from tempering.safety.blocklist import (
    MAX_ITEMS,
    MAX_REGEX_ITEMS,
    Blocklist,
    BlocklistItem,
    CompiledBlocklist,
    validate_item,
)
from tempering.store.models import ContentBlocklist, ContentBlocklistItem, now


class BlocklistNotFoundError(TemperingError):
    code = "not_found"
    kind = "not_found"


def get(session: Session, project_id: str, name: str) -> ContentBlocklist:
    row = session.scalars(select(ContentBlocklist).where(ContentBlocklist.project_id == project_id,
                                                         ContentBlocklist.name == name)).first()
    if row is None:
        raise BlocklistNotFoundError(f"No such blocklist: '{name}'", param="blocklistName")
    return row


def upsert(session: Session, project_id: str, name: str, description: str) -> tuple[ContentBlocklist, bool]:
    """Create the blocklist or update its description; ``True`` when created."""
    try:
        row = get(session, project_id, name)
    except BlocklistNotFoundError:
        row = ContentBlocklist(project_id=project_id, name=name, description=description)
        session.add(row)
        session.flush()
        return row, True
    row.description = description
    _touch(row)
    return row, False


def items(session: Session, blocklist: ContentBlocklist) -> list[ContentBlocklistItem]:
    return list(session.scalars(select(ContentBlocklistItem).where(ContentBlocklistItem.blocklist_id == blocklist.id)
                                .order_by(ContentBlocklistItem.position)))


def add_items(session: Session, blocklist: ContentBlocklist, new: list[dict]) -> list[ContentBlocklistItem]:
    """Add items (``text``, ``isRegex``, ``description``); an item equal to an existing one (same text and
    kind) updates its description. Every item is validated before any is stored, and all problems are
    reported at once."""
    problems = [f"blocklistItems[{i}]: {p}" for i, item in enumerate(new)
                if (p := validate_item(item["text"], item.get("isRegex", False)))]
    if problems:
        raise InvalidConfigError("; ".join(problems), param="blocklistItems")
    current = items(session, blocklist)
    existing = {(r.text, r.is_regex): r for r in current}
    position = max((r.position for r in current), default=-1)
    if len(existing) + len(new) > MAX_ITEMS:
        raise InvalidConfigError(f"a blocklist holds at most {MAX_ITEMS} items", param="blocklistItems")
    regexes = {key for key in existing if key[1]} | {(i["text"], True) for i in new if i.get("isRegex")}
    if len(regexes) > MAX_REGEX_ITEMS:
        raise InvalidConfigError(f"a blocklist holds at most {MAX_REGEX_ITEMS} regular expressions (each may take "
                                 "up to 50 ms per text); use exact terms for long lists", param="blocklistItems")
    out = []
    for item in new:
        key = (item["text"], item.get("isRegex", False))
        row = existing.get(key)
        if row is None:
            position += 1
            row = ContentBlocklistItem(blocklist_id=blocklist.id, text=key[0], is_regex=key[1],
                                       description=item.get("description", ""), position=position)
            session.add(row)
            existing[key] = row
        else:
            row.description = item.get("description", "")
        out.append(row)
    _touch(blocklist)
    session.flush()
    return out


def _touch(blocklist: ContentBlocklist) -> None:
    blocklist.updated_at = now()
    blocklist.revision = (blocklist.revision or 0) + 1


def remove_items(session: Session, blocklist: ContentBlocklist, item_ids: list[str]) -> None:
    session.execute(delete(ContentBlocklistItem).where(ContentBlocklistItem.blocklist_id == blocklist.id,
                                                       ContentBlocklistItem.id.in_(item_ids)))
    _touch(blocklist)


def drop(session: Session, blocklist: ContentBlocklist) -> None:
    session.execute(delete(ContentBlocklistItem).where(ContentBlocklistItem.blocklist_id == blocklist.id))
    session.delete(blocklist)


def item_counts(session: Session, project_id: str) -> dict[str, int]:
    from sqlalchemy import func

    rows = session.execute(select(ContentBlocklist.name, func.count(ContentBlocklistItem.id))
                           .outerjoin(ContentBlocklistItem, ContentBlocklistItem.blocklist_id == ContentBlocklist.id)
                           .where(ContentBlocklist.project_id == project_id).group_by(ContentBlocklist.name))
    return {name: count for name, count in rows}


def listing(session: Session, project_id: str) -> list[ContentBlocklist]:
    return list(session.scalars(select(ContentBlocklist).where(ContentBlocklist.project_id == project_id)
                                .order_by(ContentBlocklist.name)))


_cache: OrderedDict[tuple[str, int], CompiledBlocklist] = OrderedDict()
_cache_lock = threading.Lock()
CACHE_SIZE = 64


def load(session: Session, project_id: str, names: list[str]) -> list[CompiledBlocklist]:
    """The named blocklists of a project, compiled for the filter (what a policy's ``blocklists`` names).
    Compiled lists are cached per (blocklist, revision), so a request does not recompile thousands of
    terms. A name that does not exist is an error naming it: a policy must not silently lose a list."""
    rows = [get(session, project_id, name) for name in names]
    out = []
    for row in rows:
        key = (row.id, row.revision)
        with _cache_lock:
            compiled = _cache.get(key)
            if compiled is not None:
                _cache.move_to_end(key)
        if compiled is None:
            model = Blocklist(name=row.name, description=row.description,
                              items=[BlocklistItem(id=i.id, text=i.text, is_regex=i.is_regex,
                                                   description=i.description) for i in items(session, row)])
            compiled = CompiledBlocklist(model)
            with _cache_lock:
                _cache[key] = compiled
                while len(_cache) > CACHE_SIZE:
                    _cache.popitem(last=False)
        out.append(compiled)
    return out
