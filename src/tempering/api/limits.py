"""The request guard: what is decided from a request's headers, before any byte of its body is read.

Every ``/v1`` route needs an API key, so the key is checked here first and an unauthenticated request is
answered 401 with its body unread (FastAPI would otherwise parse a body before running the dependency that
checks the key). Bodies are then capped: a body declared (``Content-Length``) larger than ``max_json_bytes``
is refused 413 at once; one sent chunked is counted as it is read and cut off with 413 at the limit. The
upload route is exempt from the JSON cap only: it streams its multipart body into the artifact store under
the upload limit (``api.uploads``). The portal's forms that carry a data file (``web.UPLOAD_FORMS``) are
capped at the upload limit instead, counted the same way. A pure ASGI middleware, so nothing is buffered on
its way through.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tempering.api.deps import CALLER_STATE, authenticate, client_address
from tempering.api.errors import APIError, envelope
from tempering.services.audit import ACTOR
from tempering.web import UPLOAD_FORMS

UPLOAD_PATH = "/v1/files"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body passes the cap: FastAPI re-raises an HTTPException met while it
    reads a body (any other error would become a 400), so the error handler renders it as a 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the {limit:,}-byte limit")
        self.limit = limit


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length`` (None when absent; a malformed one counts as absent: the body is then
    counted as it is read)."""
    value = Headers(scope=scope).get("content-length", "")
    return int(value) if value.isdigit() and len(value) < 20 else None


def is_upload(scope: Scope) -> bool:
    return scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH


class RequestGuard:
    def __init__(self, app: ASGIApp, *, db, max_json_bytes: int, max_form_upload_bytes: int | None = None):
        self.app, self.db, self.limit = app, db, max_json_bytes
        # the portal's upload forms (web.UPLOAD_FORMS) carry a data file: the upload limit plus framing
        self.form_limit = max(max_form_upload_bytes or max_json_bytes, max_json_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"].startswith("/v1/") or scope["path"] == "/v1":
            authorization = Headers(scope=scope).get("authorization", "")
            try:
                caller = await run_in_threadpool(authenticate, self.db, authorization, client_address(scope))
            except APIError as exc:
                return await _answer(scope, send, exc.status, exc.message, exc.code)
            scope.setdefault("state", {})[CALLER_STATE] = caller
            ACTOR.set(caller)  # this request's task only: the audit log's actor
        if is_upload(scope):
            return await self.app(scope, receive, send)
        limit = self.form_limit if (scope["method"], scope["path"]) in UPLOAD_FORMS else self.limit
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            return await _answer(scope, send, 413, BodyTooLarge(limit).detail, "request_too_large")

        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:  # read outside FastAPI's body parsing, where no handler saw it
            if started:
                raise
            await _answer(scope, send, 413, exc.detail, "request_too_large")


async def _answer(scope: Scope, send: Send, status: int, message: str, code: str | None) -> None:
    """OpenAI's error envelope, sent without touching the request body."""
    response = envelope(status, message, "invalid_request_error", None, code)
    await response(scope, _no_body, send)


async def _no_body() -> Message:  # a JSONResponse never reads the request; this is never awaited
    return {"type": "http.disconnect"}
