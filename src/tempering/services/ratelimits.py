"""Per-deployment rate limits: requests and tokens per minute, counted in a sliding window (the ``limits``
library's sliding window counter) in-process by default, or in Redis (``TEMPERING_RATE_LIMIT_URL``) so that
several API processes share one count.

How a request is counted, before it reaches the engine:

- **requests**: 1 per request (a request with ``n`` choices is one request);
- **tokens**: the prompt's tokens plus ``max_tokens × n`` (the most it may generate; a classification: its
  texts' tokens), charged up front, so concurrent requests cannot together pass the limit. When the request
  ends, the tokens it did not generate (``max_tokens × n`` minus the completion tokens) are given back to the
  window, so the count is then prompt + completion tokens, what the usage reports. A request refused for the
  tokens does not count as a request either.

Over either limit the request is refused with ``RateLimitedError`` (429) carrying ``Retry-After`` and OpenAI's
``x-ratelimit-*`` headers, which successful answers carry as well (``RateState.headers``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

from tempering.errors import RateLimitedError

WINDOW = 60  # seconds


@dataclass(frozen=True)
class RateState:
    """A deployment's limits and what is left of them after this request, in OpenAI's headers."""

    limit_requests: int
    remaining_requests: int
    reset_requests: float  # seconds until the request count is back to its limit
    limit_tokens: int
    remaining_tokens: int
    reset_tokens: float

    def headers(self) -> dict[str, str]:
        return {"x-ratelimit-limit-requests": str(self.limit_requests),
                "x-ratelimit-remaining-requests": str(max(0, self.remaining_requests)),
                "x-ratelimit-reset-requests": duration(self.reset_requests),
                "x-ratelimit-limit-tokens": str(self.limit_tokens),
                "x-ratelimit-remaining-tokens": str(max(0, self.remaining_tokens)),
                "x-ratelimit-reset-tokens": duration(self.reset_tokens)}


def duration(seconds: float) -> str:
    """OpenAI's way of writing a reset time: ``1s``, ``6m0s``, ``250ms``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class DeploymentLimiter:
    """Requests and tokens per minute per deployment; one per server (the API and the portal share it)."""

    def __init__(self, storage_url: str | None = None):
        from limits import storage, strategies

        self.storage = storage.storage_from_string(storage_url or "memory://")
        self.limiter = strategies.SlidingWindowCounterRateLimiter(self.storage)

    @staticmethod
    def _items(rpm: int, tpm: int):
        return _per_minute(rpm), _per_minute(tpm)

    def _state(self, deployment_id: str, rpm: int, tpm: int) -> RateState:
        requests, tokens = self._items(rpm, tpm)
        now = time.time()
        r = self.limiter.get_window_stats(requests, "rpm", deployment_id)
        t = self.limiter.get_window_stats(tokens, "tpm", deployment_id)
        return RateState(rpm, r.remaining, max(0.0, r.reset_time - now), tpm, t.remaining, max(0.0, t.reset_time - now))

    def admit(self, deployment_id: str, name: str, rpm: int, tpm: int, tokens: int) -> RateState:
        """Count one request of ``tokens`` (estimated) tokens, or refuse it (``RateLimitedError`` with its
        ``retry_after`` and ``headers``)."""
        requests_item, tokens_item = self._items(rpm, tpm)
        if tokens > tpm:
            raise self._refused(deployment_id, rpm, tpm, f"this request counts {tokens:,} tokens (prompt plus "
                                f"max_tokens × n), more than deployment {name}'s limit of {tpm:,} tokens per "
                                "minute; lower max_tokens", wait=None)
        if not self.limiter.hit(requests_item, "rpm", deployment_id):
            raise self._refused(deployment_id, rpm, tpm, f"deployment {name} is over its limit of {rpm:,} requests "
                                "per minute", which="requests")
        if not self.limiter.hit(tokens_item, "tpm", deployment_id, cost=tokens):
            self._give_back(requests_item, "rpm", deployment_id, 1)
            raise self._refused(deployment_id, rpm, tpm, f"this request counts {tokens:,} tokens (prompt plus "
                                f"max_tokens × n) and deployment {name} is near its limit of {tpm:,} tokens per "
                                "minute", which="tokens")
        return self._state(deployment_id, rpm, tpm)

    def settle(self, deployment_id: str, rpm: int, tpm: int, charged: int, used: int) -> RateState:
        """The request is over: give back the tokens it was charged and did not use."""
        if charged > used:
            self._give_back(self._items(rpm, tpm)[1], "tpm", deployment_id, charged - used)
        return self._state(deployment_id, rpm, tpm)

    def _refused(self, deployment_id: str, rpm: int, tpm: int, message: str, *, which: str | None = None,
                 wait: float | None = 0) -> RateLimitedError:
        state = self._state(deployment_id, rpm, tpm)
        if wait is not None:
            wait = state.reset_requests if which == "requests" else state.reset_tokens
        error = RateLimitedError(message + (f"; retry after {math.ceil(wait)} seconds" if wait is not None else ""),
                                 retry_after=max(1.0, wait) if wait is not None else None,
                                 code="rate_limit_exceeded")
        error.headers = state.headers()
        return error

    def _give_back(self, item, *identifiers: str) -> None:
        *keys, amount = identifiers
        _give_back(self.storage, item.key_for(*keys), item.get_expiry(), amount)


@lru_cache(maxsize=1)
def _per_minute_class():
    from limits import RateLimitItemPerMinute

    class PerMinute(RateLimitItemPerMinute):
        def key_for(self, *identifiers: str) -> str:
            return "/".join([self.namespace, *(str(i) for i in identifiers), "per-minute"])

    return PerMinute


def _per_minute(amount: int):
    """A per-minute item whose count is kept under a key without its amount (the library puts the amount in
    the key), so that changing a deployment's limit keeps what the current minute has used."""
    return _per_minute_class()(amount)


def _give_back(storage, key: str, expiry: int, amount: int) -> None:
    """Take ``amount`` off the current window of a sliding window counter. The ``limits`` library has no
    refund, so this names the current window's key the way its storages do (memory: ``sliding_window_keys``;
    Redis: ``_current_window_key``); never below zero. Other storages keep the charge (the estimate)."""
    from limits.storage import MemoryStorage, RedisStorage

    if isinstance(storage, MemoryStorage):
        storage.decr(storage.sliding_window_keys(key, expiry, time.time())[1], amount)
    elif isinstance(storage, RedisStorage):
        current = storage._current_window_key(key)
        take = min(amount, storage.get(current))
        if take > 0:
            storage.incr(current, 2 * expiry, -take)
