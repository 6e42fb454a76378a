"""Tempering: a self-hosted fine-tuning foundry for small language models.

The package reads like the product: ``catalog`` (base models) → ``data`` (chat JSONL in, validated
examples out) → ``train`` (LoRA fine-tuning) → ``serve`` (chat with a model). ``cli`` is an edge that
only parses arguments, calls the core and prints.
"""

__version__ = "0.1.0"
