"""Domain errors. The core raises these; each edge (CLI, API, portal) translates them once.

``code`` is stable and machine-readable; ``param`` names the offending field or argument when there is one.
``kind`` says what sort of failure it is in words every edge understands (the API maps it to an HTTP status,
the CLI to an exit code, the portal to where the message is shown); the core knows nothing of HTTP.
"""

from __future__ import annotations

# kind → what the caller did wrong (or what went wrong): the edges map these, the core only picks one.
KINDS = ("invalid", "not_found", "conflict", "forbidden", "too_large", "rate_limited", "unavailable",
         "upstream", "internal")


# kind → the HTTP status it is reported as: by the API, and in the request log the portal shares with it.
STATUS_OF_KIND = {"invalid": 400, "not_found": 404, "conflict": 409, "forbidden": 403, "too_large": 413,
                  "rate_limited": 429, "unavailable": 503, "upstream": 502, "internal": 500}
_STATUS_OF_CODE = {"file_too_large": 413, "upstream_error": 502, "engine_error": 500}


def status_of(exc: BaseException) -> int:
    """The status an error is reported as (500 for anything that is not a domain error)."""
    if isinstance(exc, TemperingError):
        return _STATUS_OF_CODE.get(exc.code) or STATUS_OF_KIND.get(exc.kind, 400)
    return 500


class TemperingError(Exception):
    code = "tempering_error"
    kind = "invalid"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if kind is not None:
            if kind not in KINDS:
                raise ValueError(f"unknown error kind {kind!r}")
            self.kind = kind
        self.retry_after = retry_after


class NotFoundError(TemperingError):
    """An object that does not exist, or is not the caller's (answered the same, so nothing leaks)."""

    code = "not_found"
    kind = "not_found"


def not_found(kind: str, ident: str, param: str = "id") -> NotFoundError:
    shown = ident.replace("\x00", "\\x00")  # a NUL names nothing; shown escaped
    return NotFoundError(f"No such {kind}: '{shown}'", param=param)


class ModelNotFoundError(TemperingError):
    """A model id that the catalog or the fine-tuned registry does not know."""

    code = "model_not_found"
    kind = "not_found"


class ModelUnavailableError(TemperingError):
    """A known model whose weights are not on this machine."""

    code = "model_unavailable"


class InvalidDataError(TemperingError):
    """A data file that failed validation; ``report`` holds every problem found."""

    code = "invalid_data"

    def __init__(self, message: str, report=None, *, param: str = "training_file"):
        super().__init__(message, param=param)
        self.report = report


class InvalidConfigError(TemperingError):
    code = "invalid_config"


class InvalidStateError(TemperingError):
    """An action the object's current state does not allow (cancel a finished job, resume a running one)."""

    code = "invalid_state"


class ConflictError(TemperingError):
    """The action clashes with another object (a name taken, a model still deployed)."""

    code = "conflict"
    kind = "conflict"


class RateLimitedError(TemperingError):
    """Over a limit for now; ``retry_after`` says when trying again may succeed; ``headers`` what the edge
    adds to its answer (the limits' state: OpenAI's ``x-ratelimit-*``)."""

    headers: dict[str, str] | None = None

    code = "too_many_requests"
    kind = "rate_limited"


class DeployRefusedError(TemperingError):
    """A deployment refused because the model's stored evaluation says it is worse than its base."""

    code = "worse_than_base"


class ContentFilteredError(TemperingError):
    """A prompt the content filter blocked. ``content_filter_result`` is Azure's per-category annotation,
    rendered as the error's ``innererror`` (code ``ResponsibleAIPolicyViolation``)."""

    code = "content_filter"

    def __init__(self, message: str, content_filter_result: dict, *, param: str = "prompt"):
        super().__init__(message, param=param)
        self.innererror = {"code": "ResponsibleAIPolicyViolation", "content_filter_result": content_filter_result}


class ContentFilterUnavailableError(TemperingError):
    """A content filter that could not run under a fail-closed policy: the request is refused (503)."""

    code = "content_filter_error"
    kind = "unavailable"
