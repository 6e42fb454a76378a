"""``/v1/chat/completions``, ``/v1/completions`` (OpenAI's shapes, streaming included) and
``/v1/classifications`` (Tempering's own), served by deployments.

The prompt is built with ``data.encode.encode_prompt``, the code training uses, so what is served is what was
trained. Generation runs in the serving engines (``tempering.serve``); this module turns requests into
prompts and sampling parameters, applies stop sequences, shapes answers and streams, enforces each
deployment's concurrency limit, and hands every request to the request log. No database transaction is held
while generating.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tempering.api.deps import CallerDep
from tempering.api.errors import ERROR_RESPONSES, APIError
from tempering.api.monitoring import RequestRecord
from tempering.api.protocol_serving import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    ClassificationRequest,
    ClassificationResponse,
    ClassificationResult,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    TokenLogprobWire,
    TopLogprobWire,
    Usage,
)
from tempering.errors import TemperingError
from tempering.serve.params import SamplingParams, TokenLogprob

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["inference"], responses=ERROR_RESPONSES)
FINGERPRINT = "fp_tempering"


@dataclass(frozen=True)
class Served:
    """A deployment's facts, read once per request (no database session is kept while generating)."""

    id: str
    name: str
    model: str
    base_model: str
    task: str
    backend: str
    upstream_url: str | None
    upstream_model: str | None
    adapter: Path | None
    max_concurrent: int
    context_length: int


def _lookup(request: Request, project_id: str, model: str) -> Served:
    from tempering.api.routers.deployments import find_deployment
    from tempering.catalog import get_card
    from tempering.evaluate import targets

    with request.app.state.db.session(write=False) as session:
        d = find_deployment(session, project_id, model) if "\x00" not in model else None
        if d is None:
            raise APIError(404, f"The model '{model.replace(chr(0), '')}' does not exist or is not deployed in this "
                           "project; deploy it first (POST /v1/deployments, or `tempering deploy MODEL`)",
                           param="model", code="model_not_found")
        facts = {"id": d.id, "name": d.name, "model": d.model, "base_model": d.base_model, "task": d.task,
                 "backend": d.backend, "upstream_url": d.upstream_url, "upstream_model": d.upstream_model,
                 "max_concurrent": d.max_concurrent_requests}
    # the model's files may have gone since: a clear 404 then (an upstream holds its own adapters)
    adapter = targets.resolve(facts["model"]).adapter if facts["backend"] == "local" else None
    return Served(**facts, adapter=adapter, context_length=get_card(facts["base_model"]).context_length)


async def _served(request: Request, caller, model: str, task: str) -> Served:
    served = await run_in_threadpool(_lookup, request, caller.project_id, model)
    if served.task != task:
        where = "/v1/classifications" if served.task == "classification" else "/v1/chat/completions"
        raise APIError(400, f"{served.model} is a {served.task} model; call {where}", param="model",
                       code="wrong_task")
    return served


class _Slot:
    """A deployment's concurrency limit: beyond it a request is answered 429 at once (the SDKs retry)."""

    def __init__(self, request: Request, served: Served):
        self.counts: dict[str, int] = request.app.state.in_flight
        self.monitor = request.app.state.monitor
        self.served = served

    def acquire(self) -> None:
        if self.counts.get(self.served.id, 0) >= self.served.max_concurrent:
            raise APIError(429, f"deployment {self.served.name} is serving its limit of {self.served.max_concurrent} "
                           "concurrent requests; retry shortly", type="rate_limit_error", code="too_many_requests")
        self.counts[self.served.id] = self.counts.get(self.served.id, 0) + 1
        self.monitor.in_flight.labels(self.served.id).inc()

    def release(self) -> None:
        self.counts[self.served.id] -= 1
        self.monitor.in_flight.labels(self.served.id).dec()


def _engine(request: Request, served: Served):
    serving = request.app.state.serving
    if served.backend == "upstream":
        return serving.upstream(served.upstream_url, served.upstream_model, request.app.state.settings.upstream_api_key)
    return serving.engine(served.base_model)


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
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise APIError(400, "only response_format {\"type\": \"text\"} is supported", param="response_format")
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


def _budget(requested: int | None, prompt_len: int, context: int, default: int, param: str) -> int:
    room = context - prompt_len
    if room < 1:
        raise APIError(400, f"the prompt is {prompt_len} tokens and the model's context is {context}; shorten the "
                       "conversation", param="messages", code="context_length_exceeded")
    if requested is not None and requested > room:
        raise APIError(400, f"{param} is too large: {requested}. The prompt takes {prompt_len} of the model's "
                       f"{context}-token context, leaving {room}", param=param, code="context_length_exceeded")
    return requested if requested is not None else min(default, room)


def _params(body, max_tokens: int, choice: int, logprobs: bool, top_logprobs: int) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0.0:  # "only the likeliest token": greedy
        temperature, top_p = 0.0, 1.0
    seed = None if body.seed is None else (body.seed + choice) % 2**63  # n choices must differ
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          logprobs=logprobs, top_logprobs=top_logprobs)


class StopMatcher:
    """Cuts the answer before the first stop sequence, holding back text that might begin one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        keep = min(self.hold, len(self.pending))
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class ChoiceState:
    index: int
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    tokens: int = 0


async def _run_choices(engine, prompt: list[int], params: list[SamplingParams], adapter: Path | None,
                       stops: list[str], states: list[ChoiceState]) -> AsyncIterator[tuple[ChoiceState, str, list]]:
    """Run the choices concurrently (they share the engine's batch); yield (choice, new text, new logprobs)
    as pieces arrive, then once more with the choice finished."""
    out: asyncio.Queue = asyncio.Queue()

    async def one(state: ChoiceState, p: SamplingParams):
        matcher = StopMatcher(stops)
        stream = engine.generate(prompt, p, adapter)
        try:
            async for chunk in stream:
                state.tokens += chunk.tokens
                text = matcher.feed(chunk.text)
                if matcher.stopped:
                    state.finish_reason = "stop"
                    await out.put((state, text, chunk.logprobs))
                    break
                if chunk.finish_reason is not None:
                    if chunk.completion_tokens is not None:
                        state.tokens = chunk.completion_tokens
                    state.finish_reason = "length" if chunk.finish_reason == "length" else "stop"
                    await out.put((state, text + matcher.flush(), chunk.logprobs))
                    break
                if text or chunk.logprobs:
                    await out.put((state, text, chunk.logprobs))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            await out.put(exc)
        finally:
            await stream.aclose()
            await out.put(None)

    tasks = [asyncio.create_task(one(s, p)) for s, p in zip(states, params)]
    try:
        running = len(tasks)
        while running:
            item = await out.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()


def _wire_logprobs(records: list[TokenLogprob]) -> list[TokenLogprobWire]:
    return [TokenLogprobWire(token=r.token, logprob=r.logprob, bytes=list(r.token.encode("utf-8")),
                             top_logprobs=[TopLogprobWire(token=t.token, logprob=t.logprob,
                                                          bytes=list(t.token.encode("utf-8"))) for t in r.top])
            for r in records]


def _sse(payload) -> str:
    data = payload.model_dump_json(exclude_none=False) if hasattr(payload, "model_dump_json") else json.dumps(payload)
    return f"data: {data}\n\n"


def _error_event(exc: BaseException) -> str:
    if isinstance(exc, (APIError, TemperingError)):
        message, code = exc.message, getattr(exc, "code", None)
    else:
        message, code = "The server had an error while processing your request.", "server_error"
    return _sse({"error": {"message": message, "type": "server_error", "param": None, "code": code}})


class _Timer:
    def __init__(self):
        self.arrived_wall = time.time()
        self.start = time.perf_counter()
        self.first: float | None = None

    def token(self):
        if self.first is None:
            self.first = time.perf_counter()

    def ms(self) -> tuple[float, float | None]:
        end = time.perf_counter()
        return (end - self.start) * 1000, None if self.first is None else (self.first - self.start) * 1000


def _record(request: Request, served: Served, endpoint: str, timer: _Timer, status: int, *, stream: bool,
            prompt_tokens: int, completion_tokens: int, error_code: str | None = None) -> None:
    latency, ttft = timer.ms()
    request.app.state.monitor.record(RequestRecord(
        deployment_id=served.id, created_at=timer.arrived_wall, endpoint=endpoint,
        adapter=served.model if served.adapter is not None else None, stream=stream, status=status,
        error_code=error_code, latency_ms=latency, ttft_ms=ttft, prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens))


def _status_of(exc: BaseException) -> tuple[int, str | None]:
    if isinstance(exc, APIError):
        return exc.status, exc.code
    if isinstance(exc, TemperingError):
        return (502 if exc.code == "upstream_error" else 400), exc.code
    if isinstance(exc, asyncio.CancelledError):
        return 499, "client_closed_request"
    return 500, "server_error"


def _usage(prompt: list[int], states: list[ChoiceState]) -> Usage:
    completion = sum(s.tokens for s in states)
    return Usage(prompt_tokens=len(prompt), completion_tokens=completion, total_tokens=len(prompt) + completion)


async def _generate_response(request: Request, served: Served, endpoint: str, timer: _Timer, prompt: list[int],
                             params: list[SamplingParams], stops: list[str], stream: bool, include_usage: bool,
                             shape) -> object:
    """Run the choices and answer: a whole response, or a stream of server-sent events. ``shape`` builds the
    endpoint's objects (chat or completions)."""
    engine = _engine(request, served)
    states = [ChoiceState(i, logprobs=[] if p.logprobs else None) for i, p in enumerate(params)]
    ident = shape.new_id()
    created = int(time.time())
    slot = _Slot(request, served)
    slot.acquire()

    if not stream:
        status, code = 200, None
        try:
            async for state, text, logprobs in _run_choices(engine, prompt, params, served.adapter, stops, states):
                timer.token()
                state.text += text
                if state.logprobs is not None:
                    state.logprobs += logprobs
            return shape.whole(ident, created, served, states, _usage(prompt, states))
        except BaseException as exc:
            status, code = _status_of(exc)
            raise
        finally:
            slot.release()
            _record(request, served, endpoint, timer, status, stream=False, prompt_tokens=len(prompt),
                    completion_tokens=sum(s.tokens for s in states), error_code=code)

    async def events():
        status, code = 200, None
        try:
            for state in states:
                yield _sse(shape.opening(ident, created, served, state.index))
            async for state, text, logprobs in _run_choices(engine, prompt, params, served.adapter, stops, states):
                timer.token()
                if text or logprobs:
                    yield _sse(shape.piece(ident, created, served, state.index, text, logprobs, None))
                if state.finish_reason is not None:
                    yield _sse(shape.piece(ident, created, served, state.index, None, [], state.finish_reason))
            if include_usage:
                yield _sse(shape.usage(ident, created, served, _usage(prompt, states)))
            yield "data: [DONE]\n\n"
        except BaseException as exc:
            status, code = _status_of(exc)
            if not isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                log.warning("stream failed: %s", exc)
                yield _error_event(exc)
            else:
                raise
        finally:
            slot.release()
            _record(request, served, endpoint, timer, status, stream=True, prompt_tokens=len(prompt),
                    completion_tokens=sum(s.tokens for s in states), error_code=code)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _ChatShape:
    @staticmethod
    def new_id() -> str:
        return "chatcmpl-" + secrets.token_urlsafe(18)

    @staticmethod
    def whole(ident, created, served, states, usage):
        choices = [ChatChoice(index=s.index, message=AssistantMessage(content=s.text),
                              logprobs=None if s.logprobs is None else ChoiceLogprobs(content=_wire_logprobs(s.logprobs)),
                              finish_reason=s.finish_reason or "stop") for s in states]
        return ChatCompletion(id=ident, created=created, model=served.model, choices=choices, usage=usage,
                              system_fingerprint=FINGERPRINT)

    @staticmethod
    def opening(ident, created, served, index):
        return _ChatShape._chunk(ident, created, served, [ChunkChoice(index=index, delta=ChunkDelta(role="assistant",
                                                                                                     content=""))])

    @staticmethod
    def piece(ident, created, served, index, text, logprobs, finish):
        lp = ChoiceLogprobs(content=_wire_logprobs(logprobs)) if logprobs else None
        delta = ChunkDelta(content=text) if text is not None else ChunkDelta()
        return _ChatShape._chunk(ident, created, served, [ChunkChoice(index=index, delta=delta, logprobs=lp,
                                                                      finish_reason=finish)])

    @staticmethod
    def usage(ident, created, served, usage):
        return _ChatShape._chunk(ident, created, served, [], usage)

    @staticmethod
    def _chunk(ident, created, served, choices, usage=None):
        return ChatCompletionChunk(id=ident, created=created, model=served.model, choices=choices, usage=usage,
                                   system_fingerprint=FINGERPRINT)


class _CompletionShape:
    @staticmethod
    def new_id() -> str:
        return "cmpl-" + secrets.token_urlsafe(18)

    @staticmethod
    def _logprobs(records: list[TokenLogprob] | None, start: int = 0) -> CompletionLogprobs | None:
        if records is None:
            return None
        offsets, at = [], start
        for r in records:
            offsets.append(at)
            at += len(r.token)
        return CompletionLogprobs(tokens=[r.token for r in records], token_logprobs=[r.logprob for r in records],
                                  top_logprobs=[{t.token: t.logprob for t in r.top} for r in records],
                                  text_offset=offsets)

    @staticmethod
    def whole(ident, created, served, states, usage):
        choices = [CompletionChoice(index=s.index, text=s.text, logprobs=_CompletionShape._logprobs(s.logprobs),
                                    finish_reason=s.finish_reason or "stop") for s in states]
        return Completion(id=ident, created=created, model=served.model, choices=choices, usage=usage,
                          system_fingerprint=FINGERPRINT)

    @staticmethod
    def opening(ident, created, served, index):
        return _CompletionShape.piece(ident, created, served, index, "", [], None)

    @staticmethod
    def piece(ident, created, served, index, text, logprobs, finish):
        lp = _CompletionShape._logprobs(logprobs) if logprobs else None
        return Completion(id=ident, created=created, model=served.model, system_fingerprint=FINGERPRINT,
                          choices=[CompletionChoice(index=index, text=text or "", logprobs=lp, finish_reason=finish)])

    @staticmethod
    def usage(ident, created, served, usage):
        return Completion(id=ident, created=created, model=served.model, choices=[], usage=usage,
                          system_fingerprint=FINGERPRINT)


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "A chat completion, or with stream: true a stream of chunks"}})
async def chat_completions(body: ChatCompletionRequest, request: Request, caller: CallerDep):
    timer = _Timer()
    _warn_ignored(body, "chat.completions")
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = _messages(body)
    served = await _served(request, caller, body.model, "chat")
    settings = request.app.state.settings

    def encode():
        from tempering.data.encode import encode_prompt

        return encode_prompt(request.app.state.serving.tokenizer(served.base_model), messages)

    prompt = await run_in_threadpool(encode)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    budget = _budget(requested, len(prompt), served.context_length, settings.serve_default_max_tokens, param)
    params = [_params(body, budget, i, bool(body.logprobs), body.top_logprobs or 0) for i in range(body.n)]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _generate_response(request, served, "chat.completions", timer, prompt, params, body.stops(),
                                    body.stream, include_usage, _ChatShape)


@router.post("/completions", response_model=Completion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "A completion, or with stream: true a stream of them"}})
async def completions(body: CompletionRequest, request: Request, caller: CallerDep):
    """OpenAI's legacy completions; the prompt may be token ids (what the upstream backend sends)."""
    timer = _Timer()
    _warn_ignored(body, "completions")
    if body.echo or body.suffix:
        raise APIError(400, "echo and suffix are not supported", param="echo" if body.echo else "suffix")
    served = await _served(request, caller, body.model, "chat")
    if isinstance(body.prompt, str):
        tokenizer = await run_in_threadpool(request.app.state.serving.tokenizer, served.base_model)
        prompt = tokenizer(body.prompt, add_special_tokens=False)["input_ids"]
    else:
        prompt = list(body.prompt)
    if not prompt:
        raise APIError(400, "the prompt is empty", param="prompt")
    requested = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default for completions
    budget = _budget(requested, len(prompt), served.context_length, requested, "max_tokens")
    logprobs = body.logprobs is not None
    params = [_params(body, budget, i, logprobs, body.logprobs or 0) for i in range(body.n)]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _generate_response(request, served, "completions", timer, prompt, params, body.stops(),
                                    body.stream, include_usage, _CompletionShape)


@router.post("/classifications", response_model=ClassificationResponse)
async def classifications(body: ClassificationRequest, request: Request, caller: CallerDep) -> ClassificationResponse:
    """Tempering's own: the label of each text, with every label's probability, from a classification model."""
    timer = _Timer()
    _warn_ignored(body, "classifications")
    served = await _served(request, caller, body.model, "classification")
    texts = [body.input] if isinstance(body.input, str) else body.input
    serving = request.app.state.serving
    status, code, tokens = 200, None, 0
    slot = _Slot(request, served)
    slot.acquire()
    try:
        def run():
            classifier = serving.classifier(served.model)
            with serving.classify_lock:  # the tokenizer too: a fast tokenizer's truncation state is shared
                ids = classifier.encode(texts)
                return classifier.classify_ids(ids), sum(len(i) for i in ids)

        results, tokens = await run_in_threadpool(run)
        timer.token()
        return ClassificationResponse(model=served.model, usage=Usage(prompt_tokens=tokens, completion_tokens=0,
                                                                      total_tokens=tokens),
                                      data=[ClassificationResult(index=i, **r) for i, r in enumerate(results)])
    except BaseException as exc:
        status, code = _status_of(exc)
        raise
    finally:
        slot.release()
        _record(request, served, "classifications", timer, status, stream=False, prompt_tokens=tokens,
                completion_tokens=0, error_code=code)
