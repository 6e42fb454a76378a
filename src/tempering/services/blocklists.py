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


def _fits(value: str) -> bool:
    return len(value) <= MAX_DESCRIPTION and "\x00" not in value


def _description(value: str) -> str:
    if not _fits(value):
        raise TemperingError(f"a description is at most {MAX_DESCRIPTION} characters, without NUL",
                             param="description", code="invalid_value")
    return value


def get(session, caller: Caller, name: str):
    """The caller's project's blocklist ``name``; ``BlocklistNotFoundError`` (404) otherwise."""
    return store.get(session, caller.project_id, name)


def listing(session, caller: Caller) -> list:
    return store.listing(session, caller.project_id)


def item_counts(session, caller: Caller) -> dict[str, int]:
    """How many items each of the project's blocklists holds, by name."""
    return store.item_counts(session, caller.project_id)


def items(session, caller: Caller, name: str) -> list:
    return store.items(session, get(session, caller, name))


def save(session, caller: Caller, name: str, description: str = ""):
    """Create the blocklist or change its description; ``(row, created)``."""
    if not BLOCKLIST_NAME.fullmatch(name) or not name.strip("."):
        raise TemperingError("a blocklist's name is 1-64 of 0-9 A-Z a-z . _ ~ -, not only dots", param="blocklistName",
                             code="invalid_name")
    row, created = store.upsert(session, caller.project_id, name, _description(description))
    audit.record(session, "blocklist.updated", caller=caller, target=name, change="created" if created else "described")
    return row, created


def create(session, caller: Caller, name: str, description: str = ""):
    """A new blocklist; a name the project already uses is refused (``save`` creates or describes)."""
    try:
        get(session, caller, name)
    except store.BlocklistNotFoundError:
        return save(session, caller, name, description)[0]
    raise ConflictError(f"the project already has a blocklist named {name!r}", param="blocklistName",
                        code="blocklist_exists")


def applied_by(session, project_id: str, name: str, settings) -> list[str]:
    """The live deployments of the project whose filter applies the blocklist ``name`` (under ``settings``'
    default policy where they run under it)."""
    from tempering.services.deployments import effective_policy, list_deployments

    return [d.name for d in list_deployments(session, project_id)
            if (policy := effective_policy(session, d, settings)).enabled and name in policy.blocklists]


def delete(session, caller: Caller, name: str, settings) -> None:
    """Delete a blocklist; refused while a deployment's filter applies it (its requests would all meet a
    filter error, and with the default fail-open policy pass unchecked by any of its lists)."""
    row = get(session, caller, name)
    users = applied_by(session, caller.project_id, name, settings)
    if users:
        raise ConflictError(f"the blocklist {name!r} is applied by the content filter of {', '.join(users)}; take "
                            "it out of their policies first", param="blocklistName", code="blocklist_in_use")
    store.drop(session, row)
    audit.record(session, "blocklist.updated", caller=caller, target=name, change="deleted")


def add_items(session, caller: Caller, name: str, items: list[dict]) -> list:
    """Add terms or regular expressions (``text``, ``isRegex``, ``description``; every item checked before any
    is stored); the same text again updates its description."""
    problems = [f"blocklistItems[{i}].description: at most {MAX_DESCRIPTION} characters, without NUL"
                for i, item in enumerate(items) if not _fits(item.get("description") or "")]
    problems += [f"blocklistItems[{i}].text: no NUL" for i, item in enumerate(items) if "\x00" in item.get("text", "")]
    if problems:
        raise TemperingError("; ".join(problems), param="blocklistItems", code="invalid_value")
    rows = store.add_items(session, get(session, caller, name), items)
    audit.record(session, "blocklist.updated", caller=caller, target=name, change="items added", count=len(rows))
    return rows


def remove_items(session, caller: Caller, name: str, item_ids: list[str]) -> None:
    store.remove_items(session, get(session, caller, name), item_ids)
    audit.record(session, "blocklist.updated", caller=caller, target=name, change="items removed",
                 count=len(item_ids))
