"""Data: chat-completions JSONL files in, validated examples and token ids with loss labels out.

Owns validation (every problem with its line number, at once), the chat-template encoding shared by
training and serving, and token counts. Knows nothing about model weights or HTTP.
"""

from tempering.data.encode import IGNORE_INDEX, EncodedExample, encode_chat, encode_prompt, render
from tempering.data.validate import Issue, ValidationReport, load_chat_file, validate_file

__all__ = [
    "IGNORE_INDEX",
    "EncodedExample",
    "Issue",
    "ValidationReport",
    "encode_chat",
    "encode_prompt",
    "load_chat_file",
    "render",
    "validate_file",
]
