"""The content filter stage: prompts are checked before the engine, completions after it (streamed text in
windows, held back until checked). Results come in Azure OpenAI's shapes; the engine knows nothing of this.

    verdict = check_prompt(messages, policy, blocklists)      # before generation
    verdict.raise_if_filtered()                                # 400 content_filter / 503 content_filter_error
    guard = CompletionGuard(policy, blocklists)                # one per choice
    for delta in engine:  send(guard.feed(delta)); stop if guard.filtered
    send(guard.finish()); finish_reason = guard.finish_reason or engine's; guard.content_filter_results

``scorer`` is anything with ``categories`` and ``score(texts)`` (``safety.classify.Classifier``; by default
the process's shared one). Blocklists are ``Blocklist`` models or pre-compiled ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from tempering.errors import ContentFilteredError, ContentFilterUnavailableError
from tempering.safety.blocklist import BlocklistTimeout, CompiledBlocklist, Match, compile_all, find_all
from tempering.safety.policy import (
    DEFAULT_POLICY,
    DETECTED_AT,
    HARM,
    SafetyPolicy,
    blocks,
    severity,
)

log = logging.getLogger(__name__)
USER_ROLES = ("user",)
DOCUMENT_ROLES = ("system", "developer", "tool", "function")
# What a streamed completion's check can see of the text already sent, so a harmful passage split across two
# windows is still judged whole.
MIN_HOLD = 48


def _scorer(scorer):
    if scorer is not None:
        return scorer
    from tempering.safety.classify import default_classifier

    return default_classifier()


def _message_text(message) -> tuple[str, str]:
    """(role, text) of a chat message given as a dict or a pydantic model; text parts joined."""
    get = message.get if isinstance(message, dict) else (lambda k, d=None: getattr(message, k, d))
    role = get("role", "user") or "user"
    content = get("content", "") or ""
    if not isinstance(content, str):
        parts = []
        for part in content:
            pget = part.get if isinstance(part, dict) else (lambda k, d=None, p=part: getattr(p, k, d))
            if pget("type", "text") == "text":
                parts.append(pget("text", "") or "")
        content = "\n".join(parts)
    return role, content


def validate_policy(policy: SafetyPolicy, scorer=None) -> list[str]:
    """Every category a policy names that no classifier provides (empty when the policy can run)."""
    known = _scorer(scorer).categories
    return sorted(f"{direction}.{name}" for direction in ("prompt", "completion")
                  for name in getattr(policy, direction) if name not in known)


@dataclass
class _Tally:
    """Worst scores per category over the texts or windows seen, and what blocked."""

    probabilities: dict[str, float] = field(default_factory=dict)
    filtered: set[str] = field(default_factory=set)
    blocklist_hits: dict[str, bool] = field(default_factory=dict)  # blocklist name → filtered
    error: str | None = None

    def add(self, scores: dict[str, float]) -> None:
        for name, p in scores.items():
            self.probabilities[name] = max(p, self.probabilities.get(name, 0.0))

    def results(self, thresholds: dict[str, str], blocklists: list[CompiledBlocklist]) -> dict:
        """Azure's ``content_filter_results`` for what was tallied under ``thresholds``."""
        out: dict = {}
        if self.error is not None:
            out["error"] = {"code": "content_filter_error", "message": self.error}
        elif thresholds:
            for name in thresholds:
                p = self.probabilities.get(name, 0.0)
                if name in HARM:
                    out[name] = {"filtered": name in self.filtered, "severity": severity(p)}
                else:
                    out[name] = {"filtered": name in self.filtered, "detected": p >= DETECTED_AT}
        if blocklists:
            details = [{"filtered": True, "id": name} for name in sorted(self.blocklist_hits)]
            out["custom_blocklists"] = {"filtered": bool(details), "details": details}
        return out


def _judge(tally: _Tally, scores: dict[str, float], thresholds: dict[str, str],
           applies=lambda name: True) -> None:
    """Add ``scores`` to the tally and mark the categories they block."""
    missing = [name for name in thresholds if applies(name) and name not in scores]
    if missing:
        raise KeyError(f"no classifier for categories {missing}")
    tally.add({k: v for k, v in scores.items() if k in thresholds and applies(k)})
    for name, threshold in thresholds.items():
        if not applies(name) or name not in scores:
            continue
        p = scores[name]
        if (blocks(severity(p), threshold) if name in HARM else threshold != "off" and p >= DETECTED_AT):
            tally.filtered.add(name)


def _applies_to(role: str):
    """Which categories a message of ``role`` is checked for: jailbreak in what users write, indirect attacks
    in documents (system, developer, tool text), everything else everywhere."""
    def applies(name: str) -> bool:
        if name == "jailbreak":
            return role in USER_ROLES
        if name == "indirect_attack":
            return role in DOCUMENT_ROLES
        return True
    return applies


@dataclass
class PromptVerdict:
    filtered: bool
    prompt_filter_results: list[dict]  # Azure's [{"prompt_index", "content_filter_results"}]
    blocked_by: list[str] = field(default_factory=list)
    error: str | None = None
    fail_closed: bool = False

    def raise_if_filtered(self) -> None:
        """400 ``content_filter`` (param ``prompt``) for a blocked prompt (even when part of the filter
        failed: what did run blocked it); 503 ``content_filter_error`` when the filter failed under a
        fail-closed policy and nothing blocked."""
        if self.filtered:
            result = self.prompt_filter_results[0]["content_filter_results"] if self.prompt_filter_results else {}
            raise ContentFilteredError(
                "The prompt was filtered by this deployment's content filter ("
                f"{', '.join(self.blocked_by)}). Modify the prompt and retry; see docs/safety.md.", result)
        if self.error is not None and self.fail_closed:
            raise ContentFilterUnavailableError(f"The content filter could not check the prompt ({self.error}) "
                                                "and this deployment's policy refuses unchecked requests.")


def check_prompt(messages, policy: SafetyPolicy = DEFAULT_POLICY, blocklists: Iterable = (), *,
                 scorer=None, prompt_index: int = 0) -> PromptVerdict:
    """Check a chat prompt (messages as dicts or models, or one string: a user message) as one prompt."""
    if not policy.enabled:
        return PromptVerdict(False, [])
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    pairs = [_message_text(m) for m in messages]
    compiled = compile_all(blocklists)
    tally = _Tally()
    try:
        scores = _scorer(scorer).score([text for _, text in pairs])
        for (role, _), row in zip(pairs, scores):
            _judge(tally, row, policy.prompt, _applies_to(role))
    except Exception as exc:  # noqa: BLE001 - any classifier failure is the filter's error, by policy
        log.warning("content filter failed on a prompt: %s", exc)
        tally.error = f"{type(exc).__name__}: {exc}"
    try:
        for match in find_all(compiled, "\n".join(text for _, text in pairs)):
            tally.blocklist_hits[match.blocklist] = True
    except BlocklistTimeout as exc:
        tally.error = str(exc)
    blocked_by = sorted(tally.filtered) + [f"blocklist {name}" for name in sorted(tally.blocklist_hits)]
    results = tally.results(policy.prompt, compiled)
    return PromptVerdict(bool(blocked_by), [{"prompt_index": prompt_index, "content_filter_results": results}],
                         blocked_by, tally.error, policy.fail_closed)


class CompletionGuard:
    """Checks one choice's streamed text in windows of ``policy.stream_window`` characters, releasing text
    only once the window holding it has been checked, so a blocked span never reaches the client.

    ``feed(delta)`` returns the text safe to send now (often ""), ``finish()`` checks and returns the rest.
    Once ``filtered``, both return "" and the answer's ``finish_reason`` is ``content_filter``. A window is
    judged with the last window already sent as context. Blocklist terms up to the hold-back length (the
    longest exact term, at least ``MIN_HOLD`` characters) are never split across a release; when only a
    blocklist blocks, the text up to the match is still sent.
    """

    def __init__(self, policy: SafetyPolicy = DEFAULT_POLICY, blocklists: Iterable = (), *, scorer=None):
        self.policy = policy
        self._blocklists = compile_all(blocklists) if policy.enabled else []
        self.enabled = policy.enabled and (bool(policy.completion) or bool(self._blocklists))
        self._scorer = scorer if scorer is not None or not (policy.enabled and policy.completion) \
            else _scorer(None)
        self._window = policy.stream_window
        self._hold = max([MIN_HOLD] + [b.longest_term for b in self._blocklists])
        self._pending = ""
        self._sent_tail = ""
        self._tally = _Tally()
        self.filtered = False
        self.sent = ""  # everything released, for the non-streamed answer and for tests

    @property
    def finish_reason(self) -> str | None:
        return "content_filter" if self.filtered else None

    @property
    def content_filter_results(self) -> dict:
        if not self.policy.enabled:
            return {}
        return self._tally.results(self.policy.completion, self._blocklists)

    def feed(self, delta: str) -> str:
        if self.filtered:
            return ""
        if not self.enabled:
            self.sent += delta
            return delta
        self._pending += delta
        out = []
        while not self.filtered and len(self._pending) >= self._window + self._hold:
            out.append(self._check(self._pending[: self._window + self._hold], release=self._window))
        return "".join(out)

    def finish(self) -> str:
        """Check what is held back (the end of the answer) and release it if clean."""
        if self.filtered or not self.enabled or not self._pending:
            return ""
        out = []
        while not self.filtered and self._pending:
            segment = self._pending[: self._window + self._hold]
            out.append(self._check(segment, release=len(segment)))
        return "".join(out)

    def _check(self, segment: str, release: int) -> str:
        """Judge ``segment`` (the start of the pending text) with the sent tail as context; release its first
        ``release`` characters if clean, or up to a blocklist match when only blocklists block."""
        text = self._sent_tail + segment
        offset = len(self._sent_tail)
        error = None
        if self._scorer is not None and self.policy.completion:
            try:
                _judge(self._tally, self._scorer.score([text])[0], self.policy.completion)
            except Exception as exc:  # noqa: BLE001 - a failing classifier is the filter's error
                error = f"{type(exc).__name__}: {exc}"
        matches: list[Match] = []
        try:
            matches = [m for m in find_all(self._blocklists, text) if m.end > offset]
        except BlocklistTimeout as exc:
            error = str(exc)
        if error is not None:
            log.warning("content filter failed on a completion window: %s", error)
            self._tally.error = error
            if self.policy.fail_closed:
                self.filtered = True
                return ""
        for m in matches:
            self._tally.blocklist_hits[m.blocklist] = True
        if self._tally.filtered:
            self.filtered = True
            return ""
        if matches:
            self.filtered = True
            release = max(0, min(m.start for m in matches) - offset)
        released = segment[:release]
        self._pending = self._pending[len(released):] if not self.filtered else ""
        self.sent += released
        self._sent_tail = (self._sent_tail + released)[-self._window:]
        return released


@dataclass
class CompletionVerdict:
    text: str
    filtered: bool
    finish_reason: str | None
    content_filter_results: dict


def check_completion(text: str, policy: SafetyPolicy = DEFAULT_POLICY, blocklists: Iterable = (), *,
                     scorer=None) -> CompletionVerdict:
    """A whole (non-streamed) answer, checked window by window as a stream would be, so both paths cut at
    the same place."""
    guard = CompletionGuard(policy, blocklists, scorer=scorer)
    guard.feed(text)
    guard.finish()
    return CompletionVerdict(guard.sent, guard.filtered, guard.finish_reason, guard.content_filter_results)
