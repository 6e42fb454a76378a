"""``/v1/chat/completions``, ``/v1/completions`` (OpenAI's shapes, streaming included) and
``/v1/classifications`` (Tempering's own), served by deployments.

Parsing and rendering only: a request becomes messages and sampling parameters here, the chat service
(``services.chat``, shared with the portal's playground) serves it, and ``serving_shapes`` renders OpenAI's
objects. A caller that disconnects stops its generation, streaming or not. Every answer carries OpenAI's
``x-ratelimit-*`` headers of the deployment's rate limits (a refused one, 429, also ``Retry-After``); a request
is counted as its prompt plus ``max_tokens × n`` tokens (``services.ratelimits``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from tempering.api.errors import ERROR_RESPONSES, APIError
from tempering.api.permissions import CallerDep
from tempering.api.protocol_serving import (
    ChatCompletion,
    ChatCompletionRequest,
    ClassificationRequest,
    ClassificationResponse,
    ClassificationResult,
    Completion,
    CompletionRequest,
    Usage,
)
from tempering.api.serving_shapes import ChatShape, CompletionShape, sse
from tempering.errors import TemperingError
from tempering.serve.params import SamplingParams
from tempering.services.chat import (
    ChoiceState,
    Done,
    Finish,
    Piece,
    PromptChecked,
    Timer,
    cancel_on_disconnect,
    token_budget,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["inference"], responses=ERROR_RESPONSES)


def _warn_ignored(body, endpoint: str) -> None:
    extra = sorted((body.model_extra or {}).keys())
    if extra:
        log.warning("%s: ignoring unknown fields %s", endpoint, ", ".join(extra))
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name, None):
            log.warning("%s: %s is not supported and is ignored", endpoint, name)


def _messages(body: ChatCompletionRequest) -> list[dict]:
    if body.tools or body.tool_choice not in (None, "none"):
        raise APIError(400, "tools and tool_choice are not supported by this server", param="tools")
    messages = []
    for i, m in enumerate(body.messages):
        if m.role in ("tool", "function"):
            raise APIError(400, f"messages[{i}]: role '{m.role}' is not supported (no tools)", param=f"messages.{i}.role")
        if isinstance(m.content, list):
            if any(part.type != "text" or part.text is None for part in m.content):
                raise APIError(400, f"messages[{i}]: only text content parts are supported",
                               param=f"messages.{i}.content")
            content = "".join(part.text for part in m.content)
        elif m.content is None:
            raise APIError(400, f"messages[{i}]: content is required", param=f"messages.{i}.content")
        else:
            content = m.content
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    return messages


def response_format(body) -> dict | None:
    """The constraint a chat request's ``response_format`` asks for (``serve.constrain``), checked up front so
    a schema the engine cannot enforce is a 400 before anything is queued; None for free text."""
    wanted = getattr(body, "response_format", None)
    kind = wanted.get("type") if wanted else None
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        spec = {"type": "json_object"}
    elif kind == "json_schema":
        schema = wanted.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("schema", {}), dict):
            raise APIError(400, "response_format.json_schema must be an object with a JSON schema in 'schema'",
                           param="response_format.json_schema")
        spec = {"type": "json_schema", "schema": schema.get("schema") or {}}
    else:
        raise APIError(400, "response_format.type must be 'text', 'json_object' or 'json_schema'",
                       param="response_format.type")
    from tempering.serve.constrain import check

    check(spec)  # InvalidConfigError → 400 naming response_format
    return spec


def _params(body, max_tokens: int, choice: int, logprobs: bool, top_logprobs: int) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0.0:  # "only the likeliest token": greedy
        temperature, top_p = 0.0, 1.0
    seed = None if body.seed is None else (body.seed + choice) % 2**63  # n choices must differ
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          logprobs=logprobs, top_logprobs=top_logprobs, response_format=response_format(body))


def _error_event(exc: BaseException) -> str:
    if isinstance(exc, (APIError, TemperingError)):
        message, code = exc.message, getattr(exc, "code", None)
    else:
        message, code = "The server had an error while processing your request.", "server_error"
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": code}})


def _usage(done: Done) -> Usage:
    return Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                 total_tokens=done.prompt_tokens + done.completion_tokens)


async def _respond(request: Request, response: Response, served, endpoint: str, timer: Timer,
                   prompt: list[int], params: list[SamplingParams], stops: list[str], stream: bool,
                   include_usage: bool, shape, check):
    """A whole response, or a stream of server-sent events, from the chat service's events. ``check`` is what
    the content filter reads as the prompt. The request is counted against the deployment's rate limits first:
    its prompt plus ``max_tokens × n``; a whole response's headers show the count after the unused tokens were
    given back, a stream's the count as it was admitted."""
    chat = request.app.state.chat
    charge = chat.admit(served, timer, endpoint, stream, len(prompt) + sum(p.max_tokens for p in params))
    states = [ChoiceState(i, logprobs=[] if p.logprobs else None) for i, p in enumerate(params)]
    ident, created = shape.new_id(), int(time.time())
    events = chat.generate(served, endpoint, timer, prompt, params, stops, stream=stream, states=states,
                           check=check, charge=charge)

    if not stream:
        async def collect():
            try:
                async for event in events:
                    if isinstance(event, Done):
                        return shape.whole(ident, created, served, states, _usage(event),
                                           event.prompt_filter_results)
            finally:
                await events.aclose()

        try:
            whole = await cancel_on_disconnect(request.is_disconnected, collect())
        except asyncio.CancelledError:
            return None  # nobody is listening; the request log says 499
        response.headers.update(charge.headers())
        return whole

    # The first event is awaited before the stream starts: the prompt is checked and the concurrency slot taken
    # then, so a filtered or refused request is a plain 400 or 429 (with Retry-After), not a broken stream.
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None

    async def frames():
        try:
            pending = [first] if first is not None else []
            if isinstance(first, PromptChecked):  # Azure's first frame: the prompt's annotation, no choices
                yield sse(shape.prompt_checked(ident, created, served, first.prompt_filter_results))
                pending = []
            for state in states:
                yield sse(shape.opening(ident, created, served, state.index))
            async for event in _chain(pending, events):
                if isinstance(event, Piece) and (event.text or event.logprobs):
                    yield sse(shape.piece(ident, created, served, event.index, event.text, event.logprobs, None))
                elif isinstance(event, Finish):
                    yield sse(shape.piece(ident, created, served, event.index, None, [], event.reason,
                                          states[event.index].content_filter_results))
                elif isinstance(event, Done) and include_usage:
                    yield sse(shape.usage(ident, created, served, _usage(event)))
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the stream has begun: the error becomes its last event
            log.warning("stream failed: %s", exc)
            yield _error_event(exc)
        finally:
            await events.aclose()

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **charge.headers()})


async def _chain(first: list, rest):
    for item in first:
        yield item
    async for item in rest:
        yield item


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "A chat completion, or with stream: true a stream of chunks"}})
async def chat_completions(body: ChatCompletionRequest, request: Request, response: Response, caller: CallerDep):
    timer = Timer()
    _warn_ignored(body, "chat.completions")
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = _messages(body)
    chat = request.app.state.chat
    served = await chat.served(caller.project_id, body.model, "chat", caller.key_id)
    prompt = await chat.chat_prompt(served, messages)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    budget = token_budget(requested, len(prompt), served.context_length,
                          request.app.state.settings.serve_default_max_tokens, param)
    params = [_params(body, budget, i, bool(body.logprobs), body.top_logprobs or 0) for i in range(body.n)]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(request, response, served, "chat.completions", timer, prompt, params, body.stops(),
                          body.stream, include_usage, ChatShape, messages)


@router.post("/completions", response_model=Completion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "A completion, or with stream: true a stream of them"}})
async def completions(body: CompletionRequest, request: Request, response: Response, caller: CallerDep):
    """OpenAI's legacy completions; the prompt may be token ids (what the upstream backend sends)."""
    timer = Timer()
    _warn_ignored(body, "completions")
    if body.echo or body.suffix:
        raise APIError(400, "echo and suffix are not supported", param="echo" if body.echo else "suffix")
    chat = request.app.state.chat
    served = await chat.served(caller.project_id, body.model, "chat", caller.key_id)
    prompt = await chat.completion_prompt(served, body.prompt)
    requested = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default for completions
    budget = token_budget(requested, len(prompt), served.context_length, requested, "max_tokens")
    logprobs = body.logprobs is not None
    params = [_params(body, budget, i, logprobs, body.logprobs or 0) for i in range(body.n)]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(request, response, served, "completions", timer, prompt, params, body.stops(),
                          body.stream, include_usage, CompletionShape, body.prompt)


@router.post("/classifications", response_model=ClassificationResponse)
async def classifications(body: ClassificationRequest, request: Request, response: Response,
                          caller: CallerDep) -> ClassificationResponse:
    """Tempering's own: the label of each text, with every label's probability, from a classification model."""
    timer = Timer()
    _warn_ignored(body, "classifications")
    chat = request.app.state.chat
    served = await chat.served(caller.project_id, body.model, "classification", caller.key_id)
    texts = [body.input] if isinstance(body.input, str) else body.input
    results, tokens, charge = await chat.classify(served, timer, texts)
    response.headers.update(charge.headers())
    return ClassificationResponse(model=served.model, usage=Usage(prompt_tokens=tokens, completion_tokens=0,
                                                                  total_tokens=tokens),
                                  data=[ClassificationResult(index=i, **r) for i, r in enumerate(results)])
