"""The llama.cpp backend: a deployment served by llama.cpp (``llama-cpp-python``, optional) from the GGUF file
Tempering exported for it (``export.gguf``: the adapter merged), for users who want llama.cpp's speed behind
Tempering's API, filter, limits and logs. The default stays the embedded engine.

The prompt is Tempering's own (the chat template applied by ``data.encode``, token ids in the same vocabulary,
which the GGUF carries), handed to llama.cpp as token ids; answers stream back as the embedded engine's do.
llama.cpp decodes one sequence at a time here: requests wait their turn (no continuous batching), and
structured outputs and log-probabilities stay the embedded engine's.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

from tempering.errors import InvalidConfigError, TemperingError
from tempering.serve.decode import Detokenizer, Handoff
from tempering.serve.params import Chunk, SamplingParams


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppEngine:
    def __init__(self, gguf, tokenizer, eos_ids: set[int], context_length: int, threads: int | None = None):
        """``gguf``: a function giving the GGUF file's path (it may export it first: called once, in the
        decoding thread, by the first request)."""
        self.gguf, self.tokenizer, self.eos_ids = gguf, tokenizer, set(eos_ids)
        self.context_length, self.threads = min(context_length, 8192), threads
        self._llm = None
        self._lock = threading.Lock()  # llama.cpp's context is one sequence
        self.tokens_generated = 0

    def _model(self):
        if self._llm is None:
            import llama_cpp

            self._llm = llama_cpp.Llama(str(self.gguf()), n_ctx=self.context_length, n_threads=self.threads,
                                        verbose=False)
        return self._llm

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       adapter: Path | None = None) -> AsyncIterator[Chunk]:
        if params.response_format is not None or params.logprobs:
            raise InvalidConfigError("response_format and logprobs need the embedded engine; this deployment "
                                     "runs on llama.cpp", param="response_format" if params.response_format
                                     else "logprobs")
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise InvalidConfigError(f"the prompt is {len(prompt_ids)} tokens; this deployment's context is "
                                     f"{self.context_length}", param="messages")
        handoff, cancelled = Handoff(), threading.Event()
        worker = threading.Thread(target=self._decode, args=(list(prompt_ids), params, min(params.max_tokens, room),
                                                             handoff.deliver, cancelled), daemon=True)
        worker.start()
        async with aclosing(handoff.stream(on_close=cancelled.set)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _decode(self, prompt: list[int], params: SamplingParams, budget: int, deliver, cancelled) -> None:
        try:
            with self._lock:
                llm = self._model()
                llm.reset()
                if params.seed is not None:
                    llm.set_seed(params.seed)
                detok = Detokenizer(self.tokenizer)
                tokens = llm.generate(prompt, temp=params.temperature, top_p=params.top_p, top_k=0,
                                      repeat_penalty=1.0, reset=True)
                for produced, token in enumerate(tokens, start=1):
                    if cancelled.is_set():
                        return
                    if token in self.eos_ids:
                        deliver(Chunk(detok.flush(), "stop", completion_tokens=produced - 1))
                        return
                    self.tokens_generated += 1
                    text = detok.add(token)
                    if produced >= budget:
                        deliver(Chunk(text + detok.flush(), "length", completion_tokens=produced, tokens=1))
                        return
                    deliver(Chunk(text, tokens=1))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            deliver(exc if isinstance(exc, TemperingError) else TemperingError(
                f"llama.cpp failed: {exc}", code="engine_error", kind="internal"))

    async def aclose(self) -> None:
        self._llm = None
