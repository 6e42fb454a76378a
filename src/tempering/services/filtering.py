"""The content filter as serving applies it: which policy a deployment runs under (its own, stored as JSON on
its row, or the server's default), checking a policy before it is stored, and the per-choice stage the chat
service puts after the engine (``ChoiceFilter``: a ``safety.CompletionGuard`` that also holds back the
log-probabilities of text not yet released, so no blocked token leaks through them).

The filter itself (classifiers, blocklists, Azure's shapes) is ``tempering.safety``; nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import re

from pydantic import ValidationError

from tempering.errors import InvalidConfigError
from tempering.safety import CompletionGuard, SafetyPolicy, blocklist_store, validate_policy
from tempering.serve.params import TokenLogprob

OFF = SafetyPolicy(enabled=False)
BLOCKLIST_NAME = re.compile(r"[0-9A-Za-z._~-]{1,64}")  # as safety.blocklist.Blocklist.name
BLOCKLIST_CATEGORY = "custom_blocklists"  # one category for every project's lists: metrics carry no project names


def server_policy(settings) -> SafetyPolicy:
    """The server's default policy (``TEMPERING_CONTENT_FILTER_POLICY``), validated: a broken setting stops the
    server at start rather than silently filtering nothing."""
    try:
        return SafetyPolicy.model_validate(settings.content_filter_policy or {})
    except ValidationError as exc:
        raise InvalidConfigError(f"TEMPERING_CONTENT_FILTER_POLICY is not a valid policy: {exc}",
                                 param="content_filter_policy") from None


def effective_policy(stored: dict | None, default: SafetyPolicy) -> SafetyPolicy:
    """What a deployment runs under: its stored policy, or (null) the server's default."""
    return default if stored is None else SafetyPolicy.model_validate(stored)


def stored_policy(content_filter: bool, policy: SafetyPolicy | dict | None) -> dict | None:
    """What a deployment row stores for a caller's choice: off, its own policy, or null (the default)."""
    if not content_filter:
        return OFF.model_dump()
    if policy is None:
        return None
    return SafetyPolicy.model_validate(policy).model_dump()


def check_policy(session, project_id: str, policy: SafetyPolicy, scorer=None) -> None:
    """Refuse a policy that cannot run, naming every problem at once: categories no classifier provides and
    blocklists the project does not have."""
    if not policy.enabled:
        return
    problems = [f"no classifier provides the category {name}" for name in validate_policy(policy, scorer)]
    for name in policy.blocklists:
        if not BLOCKLIST_NAME.fullmatch(name):  # no such name can exist: never sent to the database
            problems.append(f"{name[:64]!r} is not a blocklist name (0-9 A-Z a-z . _ ~ -, at most 64)")
            continue
        try:
            blocklist_store.get(session, project_id, name)
        except blocklist_store.BlocklistNotFoundError:
            problems.append(f"the project has no blocklist named {name!r}")
    if problems:
        raise InvalidConfigError("content_filter_policy: " + "; ".join(problems), param="content_filter_policy")


def load_lists(session, project_id: str, policy: SafetyPolicy) -> tuple[list, str | None]:
    """The policy's blocklists, compiled; a list deleted since the policy was set is the filter's error (its
    ``fail_closed`` decides), never a silent pass."""
    if not policy.enabled or not policy.blocklists:
        return [], None
    lists, missing = [], []
    for name in policy.blocklists:
        try:
            lists += blocklist_store.load(session, project_id, [name])
        except blocklist_store.BlocklistNotFoundError:
            missing.append(name)
    return lists, (f"blocklists not found: {', '.join(missing)}" if missing else None)


def hits(results: dict) -> list[str]:
    """The categories that blocked, from Azure's ``content_filter_results``; a failed check that blocked
    (fail-closed) is ``content_filter_error``."""
    out = sorted(name for name, value in results.items()
                 if name not in ("error", BLOCKLIST_CATEGORY) and isinstance(value, dict) and value.get("filtered"))
    if results.get(BLOCKLIST_CATEGORY, {}).get("filtered"):
        out.append(BLOCKLIST_CATEGORY)
    return out


class ChoiceFilter:
    """One choice's completion filter: text is released only once checked (``CompletionGuard``), and each
    token's log-probabilities only once the text holding it has been released."""

    def __init__(self, policy: SafetyPolicy, lists: list, scorer=None, error: str | None = None):
        self.guard = CompletionGuard(policy, lists, scorer=scorer)
        self.error = error  # a blocklist that could not be loaded: the filter's error, under fail_closed a cut
        self._refused = error is not None and policy.fail_closed
        self._held: list[TokenLogprob] = []
        self._held_chars = 0  # characters of released text not yet matched by released tokens

    @property
    def filtered(self) -> bool:
        return self.guard.filtered or self._refused

    @property
    def results(self) -> dict:
        results = self.guard.content_filter_results
        if self.error is not None:
            results = {"error": {"code": "content_filter_error", "message": self.error}, **results}
        return results

    async def feed(self, text: str, logprobs: list[TokenLogprob]) -> tuple[str, list[TokenLogprob]]:
        if self._refused:
            return "", []
        released = await asyncio.to_thread(self.guard.feed, text) if text and self.guard.enabled \
            else self.guard.feed(text)
        return released, self._release(released, logprobs)

    async def finish(self) -> tuple[str, list[TokenLogprob]]:
        if self._refused:
            return "", []
        released = await asyncio.to_thread(self.guard.finish) if self.guard.enabled else ""
        out = self._release(released, [])
        if not self.filtered:
            out, self._held = out + self._held, []
        return released, out

    def _release(self, released: str, logprobs: list[TokenLogprob]) -> list[TokenLogprob]:
        self._held += logprobs
        self._held_chars += len(released)
        out = []
        while self._held and len(self._held[0].token) <= self._held_chars:
            self._held_chars -= len(self._held[0].token)
            out.append(self._held.pop(0))
        if self.filtered:  # the tokens of text never sent are never sent either
            self._held = []
        return out
