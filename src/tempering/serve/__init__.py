"""Serving: load a base or fine-tuned model and generate answers to conversations.

Owns the generation loop and sampling; knows nothing about HTTP (an API edge arrives later) or databases.
"""

from tempering.serve.local import ChatModel, Chunk, SamplingParams, complete, generate, load_chat_model

__all__ = ["ChatModel", "Chunk", "SamplingParams", "complete", "generate", "load_chat_model"]
