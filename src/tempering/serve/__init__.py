"""Serving: load a base or fine-tuned model and generate answers to conversations.

Owns the generation loop, sampling and the batching engine; knows nothing about HTTP or databases.
Importing the package loads nothing heavy: the torch-backed names below load on first use, so the edges
can import ``serve.params`` (the wire-facing sampling parameters) without torch.
"""

from tempering.serve.params import Chunk, SamplingParams

_LAZY = {name: "tempering.serve.local" for name in ("ChatModel", "complete", "generate", "load_chat_model")}

__all__ = ["ChatModel", "Chunk", "SamplingParams", "complete", "generate", "load_chat_model"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
