"""A project's custom blocklists (Azure AI Content Safety's text blocklists): create or describe one, add or
update items, remove items, delete it; each change in the audit log. The API's
``/v1/contentsafety/text/blocklists`` and the portal's blocklist pages call these; the store and the item
checks (a regular expression compiles, is bounded, matches no empty text) are ``safety.blocklist_store``."""

from __future__ import annotations

from tempering.errors import ConflictError, TemperingError
from tempering.safety import blocklist_store as store
from tempering.services import audit
from tempering.services.access import Caller
from tempering.services.filtering import BLOCKLIST_NAME

MAX_DESCRIPTION = 1024


def _text(value: str, param: str, limit: int = MAX_DESCRIPTION) -> str:
    if len(value) > limit or "\x00" in value:
        raise TemperingError(f"{param} is at most {limit} characters, without NUL", param=param,
                             code="invalid_value")
    return value


def get(session, caller: Caller, name: str):
    """The caller's project's blocklist ``name``; ``BlocklistNotFoundError`` (404) otherwise."""
    return store.get(session, caller.project_id, name)


def listing(session, caller: Caller) -> list:
    return store.listing(session, caller.project_id)


def items(session, caller: Caller, name: str) -> list:
    return store.items(session, get(session, caller, name))


def save(session, caller: Caller, name: str, description: str = ""):
    """Create the blocklist or change its description; ``(row, created)``."""
    if not BLOCKLIST_NAME.fullmatch(name) or not name.strip("."):
        raise TemperingError("a blocklist's name is 1-64 of 0-9 A-Z a-z . _ ~ -, not only dots", param="blocklistName",
                             code="invalid_name")
    row, created = store.upsert(session, caller.project_id, name, _text(description, "description"))
    audit.record(session, "blocklist.updated", caller=caller, target=name, change="created" if created else "described")
    return row, created


def applied_by(session, project_id: str, name: str) -> list[str]:
    """The live deployments of the project whose filter applies the blocklist ``name``."""
    from tempering.services.deployments import effective_policy, list_deployments
    from tempering.settings import get_settings

    settings = get_settings()
    return [d.name for d in list_deployments(session, project_id)
            if (policy := effective_policy(d, settings)).enabled and name in policy.blocklists]


def delete(session, caller: Caller, name: str) -> None:
    """Delete a blocklist; refused while a deployment's filter applies it (its requests would all meet a
    filter error, and with the default fail-open policy pass unchecked by any of its lists)."""
    row = get(session, caller, name)
    users = applied_by(session, caller.project_id, name)
    if users:
        raise ConflictError(f"the blocklist {name!r} is applied by the content filter of {', '.join(users)}; take "
                            "it out of their policies first", param="blocklistName", code="blocklist_in_use")
    store.drop(session, row)
    audit.record(session, "blocklist.updated", caller=caller, target=name, change="deleted")


def add_items(session, caller: Caller, name: str, items: list[dict]) -> list:
    """Add terms or regular expressions (``text``, ``isRegex``, ``description``; every item checked before any
    is stored); the same text again updates its description."""
    for i, item in enumerate(items):
        _text(item.get("text") or "", f"blocklistItems[{i}].text", 500)
        _text(item.get("description") or "", f"blocklistItems[{i}].description")
    rows = store.add_items(session, get(session, caller, name), items)
    audit.record(session, "blocklist.updated", caller=caller, target=name, change="items added", count=len(rows))
    return rows


def remove_items(session, caller: Caller, name: str, item_ids: list[str]) -> None:
    store.remove_items(session, get(session, caller, name), item_ids)
    audit.record(session, "blocklist.updated", caller=caller, target=name, change="items removed",
                 count=len(item_ids))
