"""One translation of errors into OpenAI's envelope ``{"error": {message, type, param, code}}``, with the
HTTP status the official SDK maps to its exception classes (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 409 ConflictError, 413, 500 InternalServerError)."""

from __future__ import annotations

import logging
import math
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tempering.api.protocol import ErrorEnvelope
from tempering.errors import TemperingError, status_of
from tempering.errors import not_found as domain_not_found

log = logging.getLogger(__name__)

# The OpenAPI description of every error answer: OpenAI's envelope. "default" covers the rarer statuses (403,
# 409, 413, 500) and stops FastAPI from advertising its 422 validation body, which this API never sends.
_ENVELOPE = {"model": ErrorEnvelope}
ERROR_RESPONSES: dict[int | str, dict] = {
    400: {**_ENVELOPE, "description": "Invalid request (invalid_request_error), naming the parameter"},
    401: {**_ENVELOPE, "description": "Missing or incorrect API key (invalid_api_key)"},
    404: {**_ENVELOPE, "description": "No such object in the caller's project (not_found)"},
    "default": {**_ENVELOPE, "description": "Any other error, in the same envelope"},
}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def not_found(kind: str, ident: str, param: str = "id") -> TemperingError:
    return domain_not_found(kind, ident, param)


def error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def envelope(status: int, message: str, type: str, param=None, code=None, innererror=None) -> JSONResponse:
    error = {"message": message, "type": type, "param": param, "code": code}
    if innererror is not None:  # Azure's detail of a content-filtered prompt (docs/safety.md)
        error["innererror"] = innererror
    return JSONResponse({"error": error}, status_code=status)


# pydantic names the member of a union that failed (``n_epochs.int``, ``prompt.list[int]``, ``literal['auto']``):
# type tags, not fields, so they are left out of ``param``
_UNION_TAG = re.compile(r"^(int|float|str|bool|bytes|none|[a-z-]+\[.*\])$")


def _field_path(loc) -> list:
    """A validation error's location as field names and indexes, without "body"/"query"/"path" and union tags."""
    parts = [p for p in loc if p not in ("body", "query", "path")]
    return [p for i, p in enumerate(parts) if i == 0 or not (isinstance(p, str) and _UNION_TAG.match(p))]


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return envelope(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(TemperingError)
    async def _domain_error(_: Request, exc: TemperingError):
        status = status_of(exc)
        response = envelope(status, exc.message, error_type(status), exc.param, exc.code,
                            getattr(exc, "innererror", None))
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        response.headers.update(getattr(exc, "headers", None) or {})  # a rate limit's x-ratelimit-* headers
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        problems = exc.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # its loc is a character offset, not a field
            at = first["loc"][-1] if first["loc"] else "?"
            return envelope(400, f"the body is not valid JSON (at character {at}): {first.get('ctx', {}).get('error', '')}",
                            "invalid_request_error", None, "invalid_json")
        param = ".".join(str(p) for p in _field_path(first["loc"])) or None
        seen: list[str] = []
        for e in problems:
            line = f"{'.'.join(str(p) for p in _field_path(e['loc'])) or 'body'}: {e['msg']}"
            if line not in seen:
                seen.append(line)
        return envelope(400, "; ".join(seen) or "invalid request", "invalid_request_error", param, "invalid_value")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "request_too_large" if exc.status_code == 413 else None  # api.limits' body cap
        return envelope(exc.status_code, str(exc.detail), kind, None, code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error", exc_info=exc)
        return envelope(500, "The server had an error while processing your request.", "server_error")
