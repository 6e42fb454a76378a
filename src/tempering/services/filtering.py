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

from tempering.errors import InvalidConfigError, TemperingError
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
    """What a deployment runs under: its stored policy, or (null) the default (``default_policy``)."""
    return default if stored is None else SafetyPolicy.model_validate(stored)


def default_policy(session, project_id: str, server_default: SafetyPolicy) -> SafetyPolicy:
    """The policy of a project's deployments that set none: its hub's ``content_filter_policy`` setting, else
    the server's (``server_policy``)."""
    from tempering.store.usage import hub_settings

    hub = (hub_settings(session, project_id) or {}).get("content_filter_policy")
    return server_default if hub is None else SafetyPolicy.model_validate(hub)


def check_hub_policy(policy) -> dict:
    """A hub's ``content_filter_policy`` setting, checked and in canonical form: a policy whose categories the
    classifiers provide; no blocklists (they belong to projects: a deployment's own policy names them)."""
    where = "settings.content_filter_policy"
    checked = _validated(policy, where)
    if checked.blocklists:
        raise InvalidConfigError(f"{where}.blocklists: blocklists belong to projects; name them in a deployment's "
                                 "own policy", param=f"{where}.blocklists")
    unknown = validate_policy(checked) if checked.enabled else []
    if unknown:
        raise InvalidConfigError(f"{where}: no classifier provides the category {', '.join(unknown)}", param=where)
    return checked.model_dump()


def stored_policy(content_filter: bool, policy: SafetyPolicy | dict | None) -> dict | None:
    """What a deployment row stores for a caller's choice: off, its own policy, or null (the default)."""
    if not content_filter:
        return OFF.model_dump()
    if policy is None:
        return None
    return _validated(policy, "content_filter_policy").model_dump()  # a form's dict (the API's body is parsed)


def _validated(policy, where: str) -> SafetyPolicy:
    """``policy`` as a ``SafetyPolicy``; else ``InvalidConfigError`` naming every problem under ``where``."""
    try:
        return SafetyPolicy.model_validate(policy)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidConfigError(f"{where}: {problems}", param=where) from None


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


# ---------------------------------------------------------------- the hub's content-safety backend

BACKEND_FIELDS = {"backend", "endpoint", "api_key_secret", "model"}


def check_backend(spec, allowed_urls: list[str]) -> dict:
    """A hub's ``settings.content_safety`` — the classifiers its projects' filters and ``/v1/moderations``
    use — in canonical form: ``{"backend": "local"}`` (the default), or a remote backend (``azure``: an Azure AI
    Content Safety resource; ``openai``: an OpenAI-compatible ``…/v1`` moderation endpoint; ``guard``: a guard
    model such as Llama Guard behind an OpenAI-compatible ``…/v1`` chat endpoint) with its ``endpoint`` (one the
    server's administrator allowed), ``api_key_secret`` (the name of a hub secret that holds its key) and a
    ``model``: for ``openai`` the moderation model (optional), for ``guard`` the guard model it serves."""
    from tempering.services.deployments import check_upstream
    from tempering.services.secrets import check_secret_name

    where = "settings.content_safety"
    if not isinstance(spec, dict):
        raise TemperingError(f"{where} is an object: backend, endpoint, api_key_secret, model", param=where,
                             code="invalid_value")
    unknown = sorted(set(spec) - BACKEND_FIELDS)
    if unknown:
        raise TemperingError(f"{where} has unknown fields: {', '.join(unknown)} (known: {', '.join(sorted(BACKEND_FIELDS))})",
                             param=where, code="invalid_value")
    backend = spec.get("backend")
    if backend not in ("local", "azure", "openai", "guard"):
        raise TemperingError(f"{where}.backend is one of local, azure, openai, guard (not {backend!r})",
                             param=f"{where}.backend", code="invalid_value")
    if backend == "local":
        extra = sorted(set(spec) - {"backend"})
        if extra:
            raise TemperingError(f"the local backend takes no {', '.join(extra)}", param=f"{where}.{extra[0]}",
                                 code="invalid_value")
        return {"backend": "local"}
    endpoint = check_upstream(spec.get("endpoint"), allowed_urls, param=f"{where}.endpoint",
                              v1=backend in ("openai", "guard"))
    secret = spec.get("api_key_secret")
    if not isinstance(secret, str):
        raise TemperingError(f"{where}.api_key_secret names the hub secret holding the {backend} backend's key",
                             param=f"{where}.api_key_secret", code="invalid_value")
    try:
        check_secret_name(secret)
    except TemperingError as exc:
        raise TemperingError(exc.message, param=f"{where}.api_key_secret", code="invalid_value") from None
    canonical = {"backend": backend, "endpoint": endpoint, "api_key_secret": secret}
    model = spec.get("model")
    if model is None and backend == "guard":
        raise TemperingError(f"{where}.model names the guard model the endpoint serves (a guard backend needs it)",
                             param=f"{where}.model", code="invalid_value")
    if model is not None:
        if backend == "azure" or not isinstance(model, str) or not 0 < len(model) <= 100:
            raise TemperingError(f"{where}.model is an openai backend's moderation model or a guard backend's "
                                 "guard model (1-100 characters)", param=f"{where}.model", code="invalid_value")
        canonical["model"] = model
    return canonical


class UnavailableScorer:
    """A remote backend that cannot be used (its key is missing or unreadable): every check fails, so the
    filter answers as the policy's ``fail_closed`` says, as for an unreachable backend."""

    def __init__(self, categories, reason: str):
        self.categories, self.reason = categories, reason

    def score(self, texts):
        from tempering.safety.remote import RemoteScorerError

        raise RemoteScorerError(self.reason)


class HubScorers:
    """The scorer of each hub's content-safety backend, made once per backend, endpoint, model and key (a
    rotated key or a changed endpoint makes a new one); None for the local classifiers."""

    def __init__(self, settings):
        self.settings = settings
        self._made: dict = {}
        self._cipher = None  # made on first use: reading the server key is needed only for a remote backend

    def for_project(self, session, project_id: str | None):
        import hashlib

        from tempering.safety.classify import default_classifier
        from tempering.safety.remote import make_scorer
        from tempering.services.secrets import Cipher, hub_secret
        from tempering.store.usage import hub_settings

        spec = ((hub_settings(session, project_id) if project_id else None) or {}).get("content_safety")
        if not spec or spec.get("backend", "local") == "local":
            return None
        from tempering.store.models import Project

        hub_id = session.get(Project, project_id).hub_id
        try:
            self._cipher = self._cipher or Cipher(self.settings)
            key = hub_secret(session, hub_id, spec["api_key_secret"], self._cipher)
        except TemperingError as exc:
            return UnavailableScorer(default_classifier().categories,
                                     f"the hub's {spec['backend']} content-safety key ({spec['api_key_secret']!r}) "
                                     f"cannot be read: {exc.message}")
        made = (spec["backend"], spec["endpoint"], spec.get("model"), hashlib.sha256(key.encode()).hexdigest())
        if made not in self._made:
            options = {"model": spec["model"]} if spec.get("model") else {}
            self._made[made] = make_scorer(spec["backend"], endpoint=spec["endpoint"], api_key=key, **options)
        return self._made[made]
