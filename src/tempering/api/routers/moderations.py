"""``POST /v1/moderations``: OpenAI's moderation endpoint, answered by Tempering's offline classifiers
(``tempering.safety.moderation``). Thin: parse, score in a worker thread, shape."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from tempering.api.errors import ERROR_RESPONSES, APIError
from tempering.api.permissions import CallerDep
from tempering.api.protocol_safety import MAX_INPUTS, ImagePart, ModerationCreate, ModerationResponse

router = APIRouter(prefix="/v1", tags=["moderations"], responses=ERROR_RESPONSES)
ALIASES = ("omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest",
           "text-moderation-stable", "text-moderation-007")


def _texts(body: ModerationCreate) -> list[str]:
    value = body.input
    if isinstance(value, str):
        return [value]
    if not value:
        raise APIError(400, "input must not be empty", param="input", code="invalid_value")
    if all(isinstance(v, str) for v in value):
        if len(value) > MAX_INPUTS:
            raise APIError(400, f"at most {MAX_INPUTS} inputs per request", param="input", code="invalid_value")
        return list(value)
    if any(isinstance(v, ImagePart) for v in value):
        raise APIError(400, "image inputs are not supported: Tempering's moderation classifies text only",
                       param="input", code="unsupported_value")
    return ["\n".join(part.text for part in value)]


@router.post("/moderations", response_model=ModerationResponse)
async def create_moderation(body: ModerationCreate, caller: CallerDep, request: Request) -> ModerationResponse:
    """Classify texts for hate, sexual, violence and self-harm content, in OpenAI's shape; OpenAI's other
    categories are reported not flagged with score 0 (docs/safety.md). The classifiers are the caller's hub's
    content-safety backend (its ``settings.content_safety``), else the local ones."""
    from tempering.safety.moderation import MODEL, moderate
    from tempering.safety.remote import RemoteScorerError

    if body.model not in (None, MODEL, *ALIASES):
        raise APIError(404, f"The model '{body.model}' does not exist: use {MODEL} (or omit model)",
                       param="model", code="model_not_found")
    texts = _texts(body)
    scorer = await run_in_threadpool(request.app.state.chat.scorer_for, caller.project_id)
    try:
        results = await run_in_threadpool(moderate, texts, scorer)
    except RemoteScorerError as exc:
        raise APIError(503, f"the hub's content-safety backend could not classify the input: {exc}",
                       code="content_filter_error") from None
    return ModerationResponse(id=f"modr-{secrets.token_hex(12)}", model=MODEL, results=results)
