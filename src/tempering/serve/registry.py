"""What a server holds in memory for serving: one engine per base model (shared by every deployment of that
base and all its adapters) and one per fully fine-tuned model served, upstream clients, tokenizers, classifiers. Everything loads lazily on first use,
so deployments stored in the database come back after a restart without loading anything up front."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

from tempering.serve.engine import TransformersEngine
from tempering.serve.upstream import UpstreamEngine


class Serving:
    def __init__(self, *, max_batch: int = 16, max_adapters: int = 8, max_classifiers: int = 4,
                 device: str = "auto", threads: int | None = None, quantize: str = "none"):
        self.max_batch, self.max_adapters, self.device, self.threads = max_batch, max_adapters, device, threads
        self.quantize = quantize
        self.max_classifiers = max_classifiers
        self.engines: dict[str, TransformersEngine] = {}
        self.deployment_engines: dict[str, str] = {}  # deployment id → the key of the engine that served it
        self.upstreams: dict[tuple[str, str], UpstreamEngine] = {}
        self.llamacpps: dict[str, object] = {}  # model → serve.llamacpp.LlamaCppEngine
        self._tokenizers: dict[str, object] = {}
        self._classifiers: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.classify_lock = threading.Lock()  # one classification forward at a time (the model is shared)

    def key(self, base_model: str, weights: Path | None = None, quantize: str | None = None) -> str:
        """An engine's name: the base model, a digest of a fully fine-tuned model's folder (which names no
        project) after ``+full-``, and its quantization after ``@`` unless it is "none"."""
        key = base_model
        if weights is not None:
            key += f"+full-{hashlib.sha1(str(weights).encode(), usedforsecurity=False).hexdigest()[:12]}"
        quantize = quantize or self.quantize
        return key if quantize == "none" else f"{key}@{quantize}"

    def engine(self, base_model: str, weights: Path | None = None, quantize: str | None = None,
               deployment: str | None = None) -> TransformersEngine:
        """The engine of ``base_model`` (every adapter of it), or of one fully fine-tuned model's own ``weights``
        (a model of its own: an engine of its own), with its weights quantized as ``quantize`` says (none, int8,
        int4; None: the server's setting): one engine per base model and quantization. ``deployment``: the
        deployment it serves, remembered for ``deployment_engine``."""
        quantize = quantize or self.quantize
        key = self.key(base_model, weights, quantize)
        with self._lock:
            if deployment is not None:
                self.deployment_engines[deployment] = key
            engine = self.engines.get(key)
            if engine is None:
                engine = TransformersEngine(base_model, max_batch=self.max_batch, max_adapters=self.max_adapters,
                                            device=self.device, threads=self.threads, quantize=quantize,
                                            weights=weights)
                engine.start()
                self.engines[key] = engine
            return engine

    def deployment_engine(self, deployment: str) -> TransformersEngine | None:
        """The engine that served ``deployment`` in this process (None before its first request)."""
        key = self.deployment_engines.get(deployment)
        return self.engines.get(key) if key is not None else None

    def upstream(self, url: str, model: str, api_key: str | None) -> UpstreamEngine:
        with self._lock:
            key = (url, model)
            if key not in self.upstreams:
                self.upstreams[key] = UpstreamEngine(url, model, api_key=api_key)
            return self.upstreams[key]

    def llamacpp(self, model: str, make):
        """The llama.cpp engine of a model (``make()`` builds it on first use; it loads on its first request)."""
        with self._lock:
            if model not in self.llamacpps:
                self.llamacpps[model] = make()
            return self.llamacpps[model]

    def tokenizer(self, base_model: str):
        """The base model's tokenizer (blocking on first use: call it from a worker thread)."""
        with self._lock:
            if base_model not in self._tokenizers:
                from tempering.catalog import get_card, load_tokenizer

                self._tokenizers[base_model] = load_tokenizer(get_card(base_model))
            return self._tokenizers[base_model]

    def classifier(self, model: str):
        """A loaded classification model, least recently used evicted (blocking: call from a worker thread)."""
        from tempering.serve.classify import load_classifier_target
        from tempering.train import refs

        with self._lock:
            if model in self._classifiers:
                self._classifiers.move_to_end(model)
                return self._classifiers[model]
        loaded = load_classifier_target(refs.resolve(model), self.device)
        with self._lock:
            self._classifiers[model] = loaded
            while len(self._classifiers) > self.max_classifiers:
                self._classifiers.popitem(last=False)
        return loaded

    async def aclose(self) -> None:
        for engine in list(self.engines.values()):
            engine.stop()
        for client in [*self.upstreams.values(), *self.llamacpps.values()]:
            await client.aclose()
