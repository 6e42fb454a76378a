"""One translation of errors into OpenAI's envelope ``{"error": {message, type, param, code}}``, with the
HTTP status the official SDK maps to its exception classes (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 409 ConflictError, 413, 500 InternalServerError)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tempering.errors import InvalidConfigError, InvalidDataError, ModelNotFoundError, TemperingError

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def not_found(kind: str, ident: str, param: str = "id") -> APIError:
    return APIError(404, f"No such {kind}: '{ident}'", param=param, code="not_found")


def _status_of(exc: TemperingError) -> int:
    if isinstance(exc, ModelNotFoundError):
        return 404
    if exc.code == "file_too_large":
        return 413
    if isinstance(exc, (InvalidConfigError, InvalidDataError)):
        return 400
    return 400


def _envelope(status: int, message: str, type: str, param=None, code=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return _envelope(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(TemperingError)
    async def _domain_error(_: Request, exc: TemperingError):
        return _envelope(_status_of(exc), exc.message, "invalid_request_error", exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        problems = exc.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path")) or None
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in problems)
        return _envelope(400, message or "invalid request", "invalid_request_error", param, "invalid_value")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _envelope(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error", exc_info=exc)
        return _envelope(500, "The server had an error while processing your request.", "server_error")
