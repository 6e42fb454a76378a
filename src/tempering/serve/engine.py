"""The serving engine: one base model in memory, every fine-tuned adapter of it, continuous batching.

``TransformersEngine(base_model)`` owns a base model and a thread that runs the decode loop. Requests
(``generate(prompt_ids, params, adapter)``, an async iterator of ``Chunk``) join the running batch as soon
as they arrive: those that arrived together are prefilled in one pass (left-padded), their KV cache is
left-padded to the batch's width (or the batch to its width) and appended, and from then on one forward pass per step decodes a token for every sequence,
each with its own adapter, sampling parameters and random generator. A sequence leaves the batch when it
ends (end of turn, budget, or its caller went away); columns that no sequence needs any more are trimmed.

Adapters (PEFT LoRA folders) load on first use under a name derived from their path and are evicted least
recently used beyond ``max_adapters`` (never while a sequence uses one); how a step runs each row under its
adapter is ``serve.adapters``. Knows nothing about HTTP or databases.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import torch

from tempering.errors import InvalidConfigError, TemperingError
from tempering.serve import compute
from tempering.serve.adapters import BASE, AdapterHost, adapter_name
from tempering.serve.decode import Detokenizer, Handoff, eos_ids, keep_rows, left_pad, pick_token
from tempering.serve.kvcache import GrowingCache
from tempering.serve.params import Chunk, SamplingParams, TokenLogprob, TopLogprob

log = logging.getLogger(__name__)


class EngineError(TemperingError):
    code = "engine_error"


@dataclass(eq=False)
class _Sequence:
    prompt: list[int]
    params: SamplingParams
    adapter: str  # a PEFT adapter name, or BASE
    adapter_path: Path | None
    budget: int
    deliver: callable  # thread-safe: hands a Chunk (or an exception) to the caller's event loop
    generator: torch.Generator | None = None
    detok: Detokenizer | None = None
    produced: int = 0
    position: int = 0  # the position of the pending token (= tokens in the cache for this row)
    pending: int = -1  # the last sampled token, not yet in the cache
    cancelled: bool = False
    done: bool = False
    matcher: object | None = None  # serve.constrain.Matcher: the row's structured-output grammar


class TransformersEngine:
    """The embedded backend: a transformers model with PEFT adapters, decoded in one thread."""

    def __init__(self, base_model: str, *, max_batch: int = 16, max_adapters: int = 8, device: str = "auto",
                 threads: int | None = None, quantize: str = "none", weights: Path | None = None):
        self.base_model = base_model
        self.weights = weights  # a fully fine-tuned model's own weights, loaded over the base's
        self.max_batch = max_batch
        self.max_adapters = max_adapters
        self.device_request = device
        self.threads = threads
        self.quantize = quantize
        self._inbox: queue.Queue[_Sequence] = queue.Queue()
        self._deferred: deque[_Sequence] = deque()  # taken, waiting until they may join the batch
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.adapters: AdapterHost | None = None  # the model and its adapters, once loaded
        self._rope_switch: int | None = None  # LongRoPE: the length past which a row is prefilled again
        self.tokenizer = None
        self.context_length = 0
        self.eos_ids: set[int] = set()
        self.constrainer = None  # serve.constrain.Constrainer, once loaded
        self.active: list[_Sequence] = []
        # counters read by monitoring
        self.steps = 0
        self.prefill_passes = 0
        self.tokens_generated = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"engine-{self.base_model}", daemon=True)
                self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        self.start()
        if not self._ready.wait(timeout):
            raise EngineError(f"{self.base_model} did not load within {timeout} s")
        if self._load_error is not None:
            raise self._load_error

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)  # wake the loop
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def queued(self) -> int:
        return self._inbox.qsize() + len(self._deferred)

    @property
    def loaded(self) -> bool:
        return self._ready.is_set() and self._load_error is None

    @property
    def memory_bytes(self) -> int | None:
        """Bytes of the loaded model's tensors: weights (quantized copies included) and loaded adapters; None
        when the engine's thread changed the modules while they were counted (an adapter loading)."""
        from tempering.serve.quantize import tensor_bytes

        try:
            return tensor_bytes(self.model) if self.model is not None else 0
        except RuntimeError:
            return None

    @property
    def adapters_loaded(self) -> int:
        return self.adapters.loaded if self.adapters is not None else 0

    def _load(self) -> None:
        from tempering.catalog import get_card, load_causal_lm, load_tokenizer
        from tempering.hardware import select_placement

        if self.threads:
            torch.set_num_threads(self.threads)
        card = get_card(self.base_model)
        self.tokenizer = load_tokenizer(card)
        model = load_causal_lm(card, select_placement(self.device_request)).eval()
        if self.weights is not None:
            from tempering.train.weights import load_full

            load_full(model, self.weights)
        if self.quantize in ("int8", "int4"):
            from tempering.serve import quantize

            getattr(quantize, f"quantize_{self.quantize}")(model)
        from tempering.serve import rope

        rope.per_row(model)  # LongRoPE: a long row must not switch its neighbours to the long factors
        self._rope_switch = rope.switch_length(model)
        self.device = next(model.parameters()).device
        self.context_length = card.context_length
        self.eos_ids = eos_ids(self.tokenizer, model)
        from tempering.serve.constrain import Constrainer

        self.constrainer = Constrainer.for_model(self.tokenizer, model, self.eos_ids)
        self.adapters = AdapterHost(model, self.max_adapters)

    @property
    def model(self):
        """The served model (a PEFT model once an adapter has loaded)."""
        return self.adapters.model if self.adapters is not None else None

    # -- the caller's side -------------------------------------------------------------------------------------

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       adapter: Path | None = None) -> AsyncIterator[Chunk]:
        """Stream the continuation of ``prompt_ids`` under ``adapter`` (a PEFT folder; None: the base)."""
        if self._stop.is_set():
            raise EngineError(f"the engine serving {self.base_model} was stopped")
        if not self._ready.is_set():
            await asyncio.to_thread(self.wait_ready)
        elif self._load_error is not None:
            raise self._load_error
        if not prompt_ids:
            raise InvalidConfigError("the prompt is empty", param="messages")
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise InvalidConfigError(f"the prompt is {len(prompt_ids)} tokens; the model's context is "
                                     f"{self.context_length}", param="messages")
        handoff = Handoff()
        seq = _Sequence(list(prompt_ids), params, adapter_name(adapter) if adapter else BASE,
                        Path(adapter) if adapter else None, min(params.max_tokens, room), handoff.deliver)
        if params.response_format is not None:  # compiled off the loop (the first one builds the token trie)
            seq.matcher = await asyncio.to_thread(self.constrainer.matcher, params.response_format)
        self._inbox.put(seq)

        def leave() -> None:  # the caller stopped reading (or the answer ended): leave the batch
            seq.cancelled = True

        async with aclosing(handoff.stream(on_close=leave)) as chunks:
            async for chunk in chunks:
                yield chunk

    # -- the decode loop (engine thread) -----------------------------------------------------------------------

    def _run(self) -> None:
        """The engine's thread: waits for requests while there is nothing to decode, and has the process's
        compute thread (``serve.compute``: one for every engine) load the model and run each iteration."""
        try:
            compute.run(self._load)
        except BaseException as exc:  # noqa: BLE001 - handed to every caller
            self._load_error = exc if isinstance(exc, TemperingError) else EngineError(
                f"could not load {self.base_model}: {exc}")
            self._ready.set()
            return
        self._ready.set()
        self._cache = None
        self._mask = None  # [rows, width] 1 where the cache holds a real token
        while not self._stop.is_set():
            if not self.active and not self._deferred:  # idle: wait here, not on the compute thread
                seq = self._inbox.get()
                if seq is None:  # stop() waking the loop
                    continue
                self._deferred.append(seq)  # taken first by _admit, in order
            try:
                compute.run(self._iteration)
            except Exception as exc:  # the compute thread is gone (the interpreter exiting): nothing can go on
                log.exception("engine %s stopped", self.base_model)
                self._stop.set()
                self._fail_waiting(EngineError(f"the engine stopped: {exc}"))
                return
        self._fail_waiting(EngineError(f"the engine serving {self.base_model} was stopped"))

    def _fail_waiting(self, error: EngineError) -> None:
        """Tell every sequence still in the engine (decoding, deferred or queued) that it will not be served."""
        waiting = [*self.active, *self._deferred]
        while True:
            try:
                seq = self._inbox.get_nowait()
            except queue.Empty:
                break
            if seq is not None:
                waiting.append(seq)
        self.active, self._deferred = [], deque()
        for seq in waiting:
            if not seq.done:
                try:
                    seq.deliver(error)
                except RuntimeError:  # its caller's event loop is closed: no one is waiting
                    pass

    def _iteration(self) -> None:
        """Admit waiting requests, then decode a token for every sequence (on the compute thread)."""
        with torch.inference_mode():
            try:
                self._admit()
                if self.active:
                    self._step()
            except Exception as exc:  # a failed step fails its sequences, not the engine
                log.exception("decode step failed")
                for seq in self.active:
                    seq.deliver(EngineError(f"generation failed: {exc}"))
                self.active, self._cache, self._mask = [], None, None

    def _admit(self) -> None:
        """Take waiting requests into the batch (never blocking: ``_run`` waits when there is nothing to
        decode) and prefill the newcomers together. A request that cannot share the batch (see
        ``_compatible``) waits, in order, until it can."""
        group: list[_Sequence] = []
        waiting, self._deferred = self._deferred, deque()
        for seq in waiting:
            if seq.cancelled:
                continue
            if len(self.active) + len(group) < self.max_batch and self._compatible(seq, group):
                group.append(seq)
            else:
                self._deferred.append(seq)
        while len(self.active) + len(group) < self.max_batch:
            try:
                seq = self._inbox.get_nowait()
            except queue.Empty:
                break
            if seq is None or seq.cancelled:  # None: stop() waking the loop
                continue
            if self._deferred or not self._compatible(seq, group):
                self._deferred.append(seq)
                continue
            group.append(seq)
        if group:
            self._start(group)

    def _start(self, group: list[_Sequence]) -> None:
        try:
            self._prefill(group)
        except Exception as exc:  # these requests' problem (e.g. a broken adapter folder)
            log.exception("prefill failed")
            if len(group) > 1:  # find whose: one at a time
                for seq in group:
                    if not seq.done:
                        self._start([seq])
                return
            group[0].deliver(exc if isinstance(exc, TemperingError) else EngineError(f"generation failed: {exc}"))

    def _compatible(self, seq: _Sequence, group: list[_Sequence] = ()) -> bool:
        others = [*self.active, *group]
        return self.adapters.compatible(seq.adapter, seq.adapter_path, [s.adapter for s in others],
                                        [s.adapter_path for s in group])

    def _prefill(self, group: list[_Sequence]) -> None:
        """Prefill newcomers in one forward pass (left-padded to the longest prompt), pick each one's first
        token, and join the ones still going to the batch."""
        for seq in group:
            self.adapters.use(seq.adapter, seq.adapter_path, {s.adapter for s in (*self.active, *group)})
        if len({s.adapter for s in group}) > 1 and not self.adapters.lean:  # a PEFT-only adapter came in: one by one
            for seq in group:
                self._prefill([seq])
            return
        ids, mask = left_pad([s.prompt for s in group], self.tokenizer.pad_token_id or 0, self.device)
        for seq in group:
            if seq.detok is None:  # not a row prefilled again (see _refill_past_rope_switch)
                if seq.params.seed is not None:
                    seq.generator = torch.Generator().manual_seed(seq.params.seed)
                seq.detok = Detokenizer(self.tokenizer)
        # Full-length layers even for a sliding-window model (Phi-3-mini-4k: 2047): a sliding layer keeps only
        # its last window of columns, which the batch's mask, joins and trims (all by column) cannot follow.
        # The model still applies the window itself, through its sliding-window attention mask.
        cache = GrowingCache()  # appended in place (serve.kvcache)
        inputs = {"input_ids": ids, "cache": cache}
        if len(group) > 1:
            inputs |= {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        out = self.adapters.forward([s.adapter for s in group], **inputs)
        self.prefill_passes += 1
        logits = out.logits[:, -1]
        greedy = logits.argmax(-1).tolist()
        for i, seq in enumerate(group):
            seq.position = len(seq.prompt)
            seq.pending = self._emit(seq, logits[i], greedy[i])
        keep = [i for i, s in enumerate(group) if not (s.done or s.cancelled)]
        if keep:
            self._join([group[i] for i in keep], cache, keep_rows(cache, mask, keep, len(group)))

    def _join(self, seqs: list[_Sequence], cache: GrowingCache, rows_mask: torch.Tensor) -> None:
        """Append prefilled sequences (their cache and mask) to the batch, left-padding the narrower side."""
        if self._cache is None:
            self._cache, self._mask = cache, rows_mask
            self.active.extend(seqs)
            return
        width, length = self._mask.shape[1], rows_mask.shape[1]
        pad_new, pad_old = max(0, width - length), max(0, length - width)
        for mine, theirs in zip(self._cache.layers, cache.layers):
            for attr in ("keys", "values"):
                old, new = getattr(mine, attr), getattr(theirs, attr)
                if pad_old:
                    old = torch.nn.functional.pad(old, (0, 0, pad_old, 0))
                if pad_new:
                    new = torch.nn.functional.pad(new, (0, 0, pad_new, 0))
                setattr(mine, attr, torch.cat([old, new], dim=0))
        old_mask = torch.nn.functional.pad(self._mask, (pad_old, 0))
        rows_mask = torch.nn.functional.pad(rows_mask, (pad_new, 0))
        self._mask = torch.cat([old_mask, rows_mask], dim=0)
        self.active.extend(seqs)

    def _refill_past_rope_switch(self) -> None:
        """LongRoPE: a row whose pending token is the first past ``original_max_position_embeddings`` leaves the
        batch and is prefilled again, prompt and answer so far, with the long factors (its cached keys were
        rotated with the short ones), as transformers' ``generate`` does. That prefill picks its next token."""
        crossing = [s for s in self.active if s.position == self._rope_switch]
        if not crossing:
            return
        keep = [i for i, s in enumerate(self.active) if s.position != self._rope_switch]
        rows = len(self.active)
        self.active = [self.active[i] for i in keep]
        if keep:
            self._mask = keep_rows(self._cache, self._mask, keep, rows)
        else:
            self._cache, self._mask = None, None
        for seq in crossing:
            seq.prompt = seq.prompt + seq.detok.ids  # every token so far; the pending one is the last
        self._start(crossing)

    def _step(self) -> None:
        if self._rope_switch is not None:
            self._refill_past_rope_switch()
            if not self.active:
                return
        rows = self.active
        ids = torch.tensor([[s.pending] for s in rows], device=self.device)
        positions = torch.tensor([[s.position] for s in rows], device=self.device)
        mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long, device=self.device)], dim=1)
        out = self.adapters.forward([s.adapter for s in rows], input_ids=ids, attention_mask=mask, position_ids=positions,
                            cache=self._cache)
        self._mask = mask
        self.steps += 1
        logits = out.logits[:, -1]
        greedy = logits.argmax(-1).tolist()
        for i, seq in enumerate(rows):
            seq.position += 1
            if seq.cancelled:
                seq.done = True
                continue
            seq.pending = self._emit(seq, logits[i], greedy[i])
        self._retire()

    def _retire(self) -> None:
        """Drop finished rows from the batch and trim the columns no remaining row needs."""
        keep = [i for i, s in enumerate(self.active) if not (s.done or s.cancelled)]
        if len(keep) == len(self.active):
            return
        rows = len(self.active)
        self.active = [self.active[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        self._mask = keep_rows(self._cache, self._mask, keep, rows)

    # -- sampling and output -----------------------------------------------------------------------------------

    def _emit(self, seq: _Sequence, logits: torch.Tensor, greedy: int) -> int:
        """Pick the next token of ``seq`` (``greedy``: the batch's argmax for this row, already computed),
        hand its text to the caller; marks the sequence done at its end."""

        params = seq.params
        if seq.matcher is not None:  # only tokens that keep the output inside its grammar
            logits = seq.matcher.mask(logits)
            greedy = int(logits.argmax())
        token = greedy if params.temperature == 0.0 else pick_token(logits.float().cpu(), params, seq.generator)
        logprobs = self._logprobs(logits, token, params.top_logprobs) if params.logprobs else []
        if seq.matcher is not None and token not in self.eos_ids:
            seq.matcher.advance(token)
            if seq.matcher.finished:  # complete: the row ends here, as at the end of a turn
                seq.produced += 1
                self.tokens_generated += 1
                seq.done = True
                seq.deliver(Chunk(seq.detok.add(token) + seq.detok.flush(), "stop", logprobs, seq.produced,
                                  tokens=1))
                return token
        if token in self.eos_ids:
            seq.done = True
            seq.deliver(Chunk(seq.detok.flush(), "stop", completion_tokens=seq.produced))
            return token
        seq.produced += 1
        self.tokens_generated += 1
        text = seq.detok.add(token)
        if seq.produced >= seq.budget:
            seq.done = True
            seq.deliver(Chunk(text + seq.detok.flush(), "length", logprobs, seq.produced, tokens=1))
        elif seq.cancelled:
            seq.done = True
        else:
            seq.deliver(Chunk(text, None, logprobs, tokens=1))
        return token

    def _logprobs(self, logits: torch.Tensor, token: int, top: int) -> list[TokenLogprob]:
        logp = torch.log_softmax(logits.float(), dim=-1)
        best = []
        if top:
            values, indices = logp.topk(top)
            best = [TopLogprob(self._piece(int(i)), float(v), int(i)) for v, i in zip(values, indices)]
        return [TokenLogprob(self._piece(token), float(logp[token]), token, best)]

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)
