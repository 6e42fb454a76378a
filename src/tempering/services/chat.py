"""Serving a deployment: the one path every chat, completion and classification request takes, whether it
comes from the REST API or the portal's playground.

``ChatService`` finds the caller's deployment, builds the prompt with the training template
(``data.encode.encode_prompt``, so what is served is what was trained), checks the token budget, holds the
deployment's concurrency slot, runs the choices in the serving engine (``tempering.serve``), cuts them at stop
sequences, and hands every request, whatever its outcome, to the request log and the metrics. Before any of
that a request is counted against the deployment's requests and tokens per minute (``admit``; how tokens are
counted: ``services.ratelimits``). It yields
plain events (``PromptChecked``, ``Piece``, ``Finish``, ``Done``); the edges shape them into OpenAI's objects
or a page. The content filter (``tempering.safety``, under the deployment's policy) is a stage here: the
prompt is checked before it reaches the engine (a blocked one is refused and logged), and each choice's text
passes a ``services.filtering.ChoiceFilter`` after it leaves the engine, so only checked text is ever
yielded and a cut choice's generation is cancelled. No database transaction is held while generating.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from tempering.errors import NotFoundError, RateLimitedError, TemperingError, status_of
from tempering.safety import SafetyPolicy
from tempering.serve import compute
from tempering.serve.params import SamplingParams, TokenLogprob
from tempering.services import filtering
from tempering.services.monitoring import RequestRecord
from tempering.services.ratelimits import DeploymentLimiter, RateState

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # nginx's status for "the client went away": the request log's word for it


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
    adapter: Path | None  # a PEFT adapter on the base's engine
    max_concurrent: int
    context_length: int
    rpm: int = 1000  # the deployment's rate limits (requests, tokens per minute)
    tpm: int = 200_000
    policy: SafetyPolicy = field(default_factory=lambda: filtering.OFF)  # the deployment's content filter policy (its own or the server's)
    blocklists: tuple = ()  # the policy's blocklists, compiled
    blocklists_error: str | None = None  # a blocklist the policy names that no longer exists
    project_id: str | None = None  # the caller's project and API key, for the usage ledger
    key_id: str | None = None
    weights: Path | None = None  # a fully fine-tuned model's own weights: an engine of its own, no adapter
    quantization: str | None = None  # the local engine's weights (none, int8, int4); None: the server's setting
    scorer: object | None = None  # the filter's classifiers (ChatService.scorer_of); None: the shared local ones


@dataclass
class ChoiceState:
    index: int
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    tokens: int = 0
    content_filter_results: dict | None = None  # Azure's annotation of this choice (None: no filter)
    cut: bool = False  # the filter ended this choice


@dataclass
class Charge:
    """What a request was counted as against its deployment's rate limits, and the limits' state (OpenAI's
    ``x-ratelimit-*`` headers): as admitted, then, once it ended, with its unused tokens given back."""

    tokens: int
    state: RateState | None  # None: not counted (the limiter's storage failed)
    settled: bool = False

    def headers(self) -> dict[str, str]:
        return self.state.headers() if self.state is not None else {}


@dataclass(frozen=True)
class PromptChecked:
    """The prompt passed the content filter: Azure's ``prompt_filter_results`` (first, before any text)."""

    prompt_filter_results: list[dict]


@dataclass(frozen=True)
class Piece:
    """New text (and log-probabilities) of one choice."""

    index: int
    text: str
    logprobs: list[TokenLogprob]


@dataclass(frozen=True)
class Finish:
    """A choice has ended: "stop" (end of answer or a stop sequence) or "length"."""

    index: int
    reason: str


@dataclass(frozen=True)
class Done:
    """Every choice has ended; token counts for the usage."""

    prompt_tokens: int
    completion_tokens: int
    prompt_filter_results: list[dict] | None = None  # None: no content filter


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


class Timer:
    """Arrival, first token and end of one request, for the request log."""

    def __init__(self):
        self.arrived_wall = time.time()
        self.start = time.perf_counter()
        self.first: float | None = None

    def token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def ms(self) -> tuple[float, float | None]:
        end = time.perf_counter()
        return (end - self.start) * 1000, None if self.first is None else (self.first - self.start) * 1000


def token_budget(requested: int | None, prompt_len: int, context: int, default: int, param: str) -> int:
    """New tokens an answer may have: what was asked for, if it fits the context after the prompt."""
    room = context - prompt_len
    if room < 1:
        raise TemperingError(f"the prompt is {prompt_len} tokens and the model's context is {context}; shorten "
                             "the conversation", param="messages", code="context_length_exceeded")
    if requested is not None and requested > room:
        raise TemperingError(f"{param} is too large: {requested}. The prompt takes {prompt_len} of the model's "
                             f"{context}-token context, leaving {room}", param=param, code="context_length_exceeded")
    return requested if requested is not None else min(default, room)


async def run_choices(engine, prompt: list[int], params: list[SamplingParams], adapter: Path | None,
                      stops: list[str], states: list[ChoiceState],
                      tasks: list[asyncio.Task] | None = None) -> AsyncIterator[Piece | Finish]:
    """Run the choices concurrently (they share the engine's batch); yield each choice's new text as it
    arrives and, once, its end. A choice's pieces and its end reach the caller in order. ``tasks`` receives
    each choice's task: cancelling one whose state is ``cut`` ends that choice's generation alone."""
    out: asyncio.Queue = asyncio.Queue()

    async def one(state: ChoiceState, p: SamplingParams):
        matcher = StopMatcher(stops)
        stream = engine.generate(prompt, p, adapter)
        try:
            async for chunk in stream:
                state.tokens += chunk.tokens
                text = matcher.feed(chunk.text)
                if matcher.stopped or chunk.finish_reason is not None:
                    if not matcher.stopped:
                        text += matcher.flush()
                        if chunk.completion_tokens is not None:
                            state.tokens = chunk.completion_tokens
                    reason = "length" if chunk.finish_reason == "length" and not matcher.stopped else "stop"
                    await out.put(Piece(state.index, text, chunk.logprobs))
                    await out.put(Finish(state.index, reason))
                    break
                if text or chunk.logprobs:
                    await out.put(Piece(state.index, text, chunk.logprobs))
        except asyncio.CancelledError:
            if not state.cut:  # a choice the filter cut ends quietly; anything else is the request's end
                await out.put(asyncio.CancelledError())
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            await out.put(exc)
        finally:
            await stream.aclose()
            await out.put(None)

    tasks = tasks if tasks is not None else []
    tasks += [asyncio.create_task(one(s, p)) for s, p in zip(states, params)]
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


def outcome(exc: BaseException) -> tuple[int, str | None]:
    """(status, error code) of a request that ended in ``exc``, as the request log records it."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return CLIENT_CLOSED, "client_closed_request"
    if isinstance(exc, TemperingError):
        return status_of(exc), exc.code
    return 500, "server_error"


class ChatService:
    """The serving path of one server: its database, engines (``serve.registry.Serving``), request log and
    metrics (``services.monitoring.Monitor``) and settings. The API and the portal share one instance."""

    def __init__(self, db, serving, monitor, settings):
        self.db, self.serving, self.monitor, self.settings = db, serving, monitor, settings
        self.in_flight: dict[str, int] = {}  # deployment id → requests being served
        self.default_policy = filtering.server_policy(settings)  # for deployments that set none, in no hub that does
        self.scorer = None  # the content filter's scorer; None: the process's shared local classifiers
        self.hub_scorers = filtering.HubScorers(settings)  # a hub's remote backend (settings.content_safety)
        self.limits = DeploymentLimiter(settings.rate_limit_url)  # per deployment; Redis: shared by processes

    # ---------------------------------------------------------------- the deployment
    def _lookup(self, project_id: str, model: str, key_id: str | None = None) -> Served:
        from tempering.catalog import get_card
        from tempering.services.deployments import find_deployment
        from tempering.train import refs

        with self.db.session(write=False) as session:
            d = find_deployment(session, project_id, model) if "\x00" not in model else None
            if d is None:
                raise NotFoundError(f"The model '{model.replace(chr(0), '')}' does not exist or is not deployed in "
                                    "this project; deploy it first (POST /v1/deployments, or `tempering deploy "
                                    "MODEL`)", param="model", code="model_not_found")
            facts = {"id": d.id, "name": d.name, "model": d.model, "base_model": d.base_model, "task": d.task,
                     "backend": d.backend, "upstream_url": d.upstream_url, "upstream_model": d.upstream_model,
                     "max_concurrent": d.max_concurrent_requests, "rpm": d.max_requests_per_1_minute,
                     "tpm": d.max_tokens_per_1_minute, "quantization": d.quantization}
            policy = filtering.effective_policy(d.content_filter_policy, filtering.default_policy(
                session, project_id, self.default_policy)) if d.task == "chat" else filtering.OFF
            lists, lists_error = filtering.load_lists(session, project_id, policy)
            facts |= {"policy": policy, "blocklists": tuple(lists), "blocklists_error": lists_error}
            if policy.enabled:
                facts["scorer"] = self.scorer_of(session, project_id)
        # the model's files may have gone since: a clear 404 then (an upstream holds its own adapters)
        target = refs.resolve(facts["model"]) if facts["backend"] != "upstream" else None
        adapter = target.adapter if target is not None and not target.full else None
        weights = target.adapter if target is not None and target.full else None
        return Served(**facts, adapter=adapter, weights=weights, context_length=get_card(facts["base_model"]).context_length,
                      project_id=project_id, key_id=key_id)

    async def served(self, project_id: str, model: str, task: str, key_id: str | None = None) -> Served:
        """The caller's deployment named ``model`` (its name, id, or the model it serves) for ``task``;
        ``key_id``: the API key calling, which the request log and the usage ledger record."""
        served = await asyncio.to_thread(self._lookup, project_id, model, key_id)
        if served.task != task:
            where = "/v1/classifications" if served.task == "classification" else "/v1/chat/completions"
            raise TemperingError(f"{served.model} is a {served.task} model; call {where}", param="model",
                                 code="wrong_task")
        return served

    def engine(self, served: Served):
        if served.backend == "upstream":
            return self.serving.upstream(served.upstream_url, served.upstream_model, self.settings.upstream_api_key)
        if served.backend == "llama.cpp":
            tokenizer = self.serving.tokenizer(served.base_model)  # loaded already: the prompt was encoded with it
            return self.serving.llamacpp(served.model, lambda: self._llamacpp(served, tokenizer))
        return self.serving.engine(served.base_model, served.weights, served.quantization, deployment=served.id)

    def _llamacpp(self, served: Served, tokenizer):
        from tempering.serve.llamacpp import LlamaCppEngine
        from tempering.services.deployments import gguf_of

        ends = {tokenizer.eos_token_id} | {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|end|>")
                                           if t in tokenizer.get_vocab()}
        return LlamaCppEngine(lambda: gguf_of(served.model, self.settings), tokenizer, ends - {None},
                              served.context_length, self.settings.serve_threads)

    # ---------------------------------------------------------------- prompts
    async def chat_prompt(self, served: Served, messages: list[dict]) -> list[int]:
        """The served prompt of a conversation: the training template's, token for token."""
        def encode():
            from tempering.data.encode import encode_prompt

            return encode_prompt(self.serving.tokenizer(served.base_model), messages)

        return await asyncio.to_thread(encode)

    async def completion_prompt(self, served: Served, prompt: str | list[int]) -> list[int]:
        """A legacy completion's prompt: text (tokenized as is) or token ids, each checked to be in the
        model's vocabulary."""
        tokenizer = await asyncio.to_thread(self.serving.tokenizer, served.base_model)
        if isinstance(prompt, str):
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = list(prompt)
            vocabulary = len(tokenizer)
            wrong = next((i for i, t in enumerate(ids) if not 0 <= t < vocabulary), None)
            if wrong is not None:
                raise TemperingError(f"prompt[{wrong}] is {ids[wrong]}, outside the model's vocabulary "
                                     f"(0 to {vocabulary - 1})", param="prompt", code="invalid_value")
        if not ids:
            raise TemperingError("the prompt is empty", param="prompt", code="invalid_value")
        return ids

    # ---------------------------------------------------------------- rate limits, the slot and the log
    def admit(self, served: Served, timer: Timer, endpoint: str, stream: bool, tokens: int) -> Charge:
        """Count the request and its ``tokens`` (prompt + max_tokens × n; ``services.ratelimits`` says how)
        against the deployment's requests and tokens per minute; over either it is refused (429 with
        Retry-After and the ``x-ratelimit-*`` headers) and logged as a 429. A limiter storage that cannot be
        reached (Redis down) lets the request through, without headers, and says so in the server's log."""
        try:
            state = self.limits.admit(served.id, served.name, served.rpm, served.tpm, tokens)
        except RateLimitedError as error:
            self.record(served, endpoint, timer, 429, stream=stream, prompt_tokens=0, completion_tokens=0,
                        error_code=error.code)
            raise
        except Exception:  # serving does not stop with the limiter's storage
            log.warning("rate limits of deployment %s not counted: the limiter's storage failed", served.id,
                        exc_info=True)
            return Charge(tokens, None, settled=True)
        return Charge(tokens, state)

    def settle(self, served: Served, charge: Charge | None, used: int) -> None:
        """The request has ended having used ``used`` tokens (prompt + completion): the rest of its charge is
        given back to the deployment's tokens per minute."""
        if charge is None or charge.settled:
            return
        charge.settled = True
        try:
            charge.state = self.limits.settle(served.id, served.rpm, served.tpm, charge.tokens, used)
        except Exception:
            log.warning("could not give back unused tokens of deployment %s", served.id, exc_info=True)

    def acquire(self, served: Served, timer: Timer, endpoint: str, stream: bool) -> None:
        """The deployment's concurrency limit: beyond it a request is refused at once (and logged as a 429)."""
        if self.in_flight.get(served.id, 0) >= served.max_concurrent:
            error = RateLimitedError(f"deployment {served.name} is serving its limit of {served.max_concurrent} "
                                     "concurrent requests; retry shortly", retry_after=1)
            self.record(served, endpoint, timer, 429, stream=stream, prompt_tokens=0, completion_tokens=0,
                        error_code=error.code)
            raise error
        self.in_flight[served.id] = self.in_flight.get(served.id, 0) + 1
        self.monitor.in_flight.labels(served.id).inc()

    def release(self, served: Served) -> None:
        self.in_flight[served.id] -= 1
        self.monitor.in_flight.labels(served.id).dec()

    def record(self, served: Served, endpoint: str, timer: Timer, status: int, *, stream: bool,
               prompt_tokens: int, completion_tokens: int, error_code: str | None = None,
               filtered: str | None = None, filtered_categories: list[str] | None = None) -> None:
        latency, ttft = timer.ms()
        self.monitor.record(RequestRecord(
            deployment_id=served.id, created_at=timer.arrived_wall, endpoint=endpoint,
            adapter=served.model if (served.adapter or served.weights) is not None else None, stream=stream,
            status=status,
            error_code=error_code, latency_ms=latency, ttft_ms=ttft, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, filtered=filtered, filtered_categories=filtered_categories,
            key_id=served.key_id, project_id=served.project_id, base_model=served.base_model))

    # ---------------------------------------------------------------- the content filter
    def scorer_of(self, session, project_id: str):
        """The classifiers a project's checks use: its hub's remote backend, else the server's scorer (None:
        the shared local classifiers)."""
        return self.hub_scorers.for_project(session, project_id) or self.scorer

    def scorer_for(self, project_id: str):
        """``scorer_of`` in a session of its own (``/v1/moderations``)."""
        with self.db.session(write=False) as session:
            return self.scorer_of(session, project_id)

    async def check_prompt(self, served: Served, endpoint: str, timer: Timer, check, prompt: list[int], *,
                           stream: bool) -> list[dict] | None:
        """Azure's ``prompt_filter_results`` of a prompt that passes the deployment's filter (None when the
        filter is off). ``check`` is the conversation (messages), a text, or token ids (decoded to be checked).
        A blocked prompt raises ``ContentFilteredError`` (400) and a fail-closed filter that could not check it
        ``ContentFilterUnavailableError`` (503); both are logged with the categories that blocked."""
        policy = served.policy
        if not policy.enabled:
            return None

        def run():
            from tempering.safety import check_prompt

            text = check
            if isinstance(check, list) and check and isinstance(check[0], int):
                text = self.serving.tokenizer(served.base_model).decode(check, skip_special_tokens=True)
            return check_prompt(text, policy, served.blocklists, scorer=served.scorer)

        verdict = await asyncio.to_thread(run)
        if served.blocklists_error is not None:
            verdict.error = verdict.error or served.blocklists_error
            verdict.fail_closed = policy.fail_closed
            for entry in verdict.prompt_filter_results:
                entry["content_filter_results"] = {"error": {"code": "content_filter_error",
                                                             "message": served.blocklists_error},
                                                   **entry["content_filter_results"]}
        try:
            verdict.raise_if_filtered()
        except TemperingError as exc:
            results = verdict.prompt_filter_results[0]["content_filter_results"]
            categories = filtering.hits(results) or ["content_filter_error"]
            self.record(served, endpoint, timer, status_of(exc), stream=stream, prompt_tokens=len(prompt),
                        completion_tokens=0, error_code=exc.code, filtered="prompt", filtered_categories=categories)
            raise
        return verdict.prompt_filter_results

    def choice_filters(self, served: Served, count: int) -> list[filtering.ChoiceFilter] | None:
        if not served.policy.enabled:
            return None
        return [filtering.ChoiceFilter(served.policy, list(served.blocklists), served.scorer, served.blocklists_error)
                for _ in range(count)]

    # ---------------------------------------------------------------- generation
    async def generate(self, served: Served, endpoint: str, timer: Timer, prompt: list[int],
                       params: list[SamplingParams], stops: list[str], *, stream: bool,
                       states: list[ChoiceState], check=None, charge: Charge | None = None
                       ) -> AsyncIterator[PromptChecked | Piece | Finish | Done]:
        """Run the request's choices, filling ``states``; yield ``PromptChecked`` (when the deployment filters),
        pieces, ends, then ``Done``. ``check`` is what the content filter reads as the prompt (the messages, or
        the completion prompt); a blocked prompt raises before anything runs. The concurrency slot is held
        until the generator is closed; the request is logged with its real outcome (a caller that goes away is
        logged as 499 and its generation is cancelled). ``charge`` (``admit``'s) is settled when it ends, with
        the tokens really used."""
        events = self._generate(served, endpoint, timer, prompt, params, stops, stream=stream, states=states,
                                check=check)
        try:
            async for event in events:
                if isinstance(event, Done):
                    self.settle(served, charge, event.prompt_tokens + event.completion_tokens)
                yield event
        finally:
            await events.aclose()  # releases the concurrency slot and logs the request
            self.settle(served, charge, len(prompt) + sum(s.tokens for s in states))

    async def _generate(self, served: Served, endpoint: str, timer: Timer, prompt: list[int],
                        params: list[SamplingParams], stops: list[str], *, stream: bool,
                        states: list[ChoiceState], check=None) -> AsyncIterator[PromptChecked | Piece | Finish | Done]:
        engine = self.engine(served)
        prompt_results = await self.check_prompt(served, endpoint, timer, check if check is not None else prompt,
                                                 prompt, stream=stream)
        filters = self.choice_filters(served, len(states))
        self.acquire(served, timer, endpoint, stream)
        status, code = 200, None
        tasks: list[asyncio.Task] = []
        try:
            if prompt_results is not None:
                yield PromptChecked(prompt_results)
            async for event in run_choices(engine, prompt, params, served.adapter, stops, states, tasks):
                state = states[event.index]
                if state.cut:
                    continue  # what a cut choice had already queued
                for out in (await self._filter(event, filters[event.index], state, tasks)) if filters else (event,):
                    timer.token()
                    if isinstance(out, Piece):
                        state.text += out.text
                        if state.logprobs is not None:
                            state.logprobs += out.logprobs
                    else:
                        state.finish_reason = out.reason
                        if filters:
                            state.content_filter_results = filters[out.index].results
                    yield out
        except BaseException as exc:
            status, code = outcome(exc)
            raise
        finally:
            self.release(served)
            cut = [filtering.hits(f.results) or ["content_filter_error"] for f in filters or () if f.filtered]
            self.record(served, endpoint, timer, status, stream=stream, prompt_tokens=len(prompt),
                        completion_tokens=sum(s.tokens for s in states), error_code=code,
                        filtered="completion" if cut else None,
                        filtered_categories=sorted({c for names in cut for c in names}) if cut else None)
        # logged already: a caller may stop reading here
        yield Done(len(prompt), sum(s.tokens for s in states), prompt_results)

    @staticmethod
    async def _filter(event: Piece | Finish, choice: filtering.ChoiceFilter, state: ChoiceState,
                      tasks: list[asyncio.Task]) -> list[Piece | Finish]:
        """One engine event through its choice's filter: the checked text it releases, and the choice's end
        (``content_filter`` when the filter cut it, which also cancels its generation)."""
        if isinstance(event, Piece):
            text, logprobs = await choice.feed(event.text, event.logprobs)
        else:
            text, logprobs = await choice.finish()
        out: list[Piece | Finish] = [Piece(event.index, text, logprobs)] if text or logprobs else []
        if choice.filtered:
            state.cut = True
            tasks[event.index].cancel()
            out.append(Finish(event.index, "content_filter"))
        elif isinstance(event, Finish):
            out.append(event)
        return out

    async def classify(self, served: Served, timer: Timer, texts: list[str]) -> tuple[list[dict], int, Charge]:
        """Each text's label and probabilities, the tokens read and the request's charge against the rate
        limits (its texts' tokens, exact: they are encoded before it is counted); logged like a generation."""
        status, code, tokens = 200, None, 0

        def encode():
            classifier = self.serving.classifier(served.model)
            with self.serving.classify_lock:  # a fast tokenizer's truncation state is shared
                return classifier, classifier.encode(texts)

        classifier, ids = await compute.run_async(encode)  # loading it is torch work: the compute thread
        charge = self.admit(served, timer, "classifications", False, sum(len(i) for i in ids))
        self.acquire(served, timer, "classifications", False)
        try:
            def run():
                with self.serving.classify_lock:
                    return classifier.classify_ids(ids), sum(len(i) for i in ids)

            results, tokens = await compute.run_async(run)
            timer.token()
            return results, tokens, charge
        except BaseException as exc:
            status, code = outcome(exc)
            raise
        finally:
            self.release(served)
            self.settle(served, charge, tokens if status == 200 else 0)
            self.record(served, "classifications", timer, status, stream=False, prompt_tokens=tokens,
                        completion_tokens=0, error_code=code)


async def cancel_on_disconnect(is_disconnected, work):
    """Await the coroutine ``work``, cancelling it if ``is_disconnected()`` (an async predicate, polled) turns
    true first: a caller that went away does not keep generating or hold a concurrency slot."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await is_disconnected():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                raise asyncio.CancelledError("the client disconnected")
    finally:
        if not task.done():
            task.cancel()
