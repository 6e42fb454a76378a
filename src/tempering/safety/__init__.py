"""Content safety: Azure-style filtering of prompts and completions, offline. A stage of its own before and
after the engine (which knows nothing of it), called by the chat service and by ``/v1/moderations``.

- ``policy``: ``SafetyPolicy`` (thresholds per category and direction), severity bands; pure pydantic.
- ``filter``: ``check_prompt`` → ``PromptVerdict``; ``CompletionGuard`` for streams; ``check_completion``.
- ``classify``: the shipped linear classifiers, custom categories, the profanity lexicon.
- ``blocklist``: per-project exact terms and time-bounded regular expressions.
- ``model`` / ``features``: TF-IDF + linear scoring from JSON and safetensors (never pickle).
- ``remote``: Azure AI Content Safety and OpenAI-compatible moderation as scorers (``make_scorer``).
- ``train`` / ``data``: training from labelled sets (scikit-learn, imported only there).

Importing this package loads no torch, no scikit-learn and no weights; the classifier loads on first use.
"""

from tempering.safety.blocklist import Blocklist, BlocklistItem
from tempering.safety.filter import (
                                     CompletionGuard,
                                     CompletionVerdict,
                                     PromptVerdict,
                                     check_completion,
                                     check_prompt,
                                     validate_policy,
)
from tempering.safety.policy import DEFAULT_POLICY, SafetyPolicy

__all__ = [
                                     "DEFAULT_POLICY",
                                     "Blocklist",
                                     "BlocklistItem",
                                     "CompletionGuard",
                                     "CompletionVerdict",
                                     "PromptVerdict",
                                     "SafetyPolicy",
                                     "check_completion",
                                     "check_prompt",
                                     "validate_policy",
]
