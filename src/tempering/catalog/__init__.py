"""The model catalog: which base models exist, what they are, and how their weights are loaded.

Owns ids, families, context lengths, licences, and turning weights on disk (an embedded GGUF, a local
folder of Hugging Face weights, the Hugging Face cache) into a loaded tokenizer and model. Knows nothing
about jobs, training or HTTP.
"""

from tempering.catalog.loading import load_causal_lm, load_tokenizer, model_status, resolve_weights
from tempering.catalog.registry import (
    DEFAULT_MODEL_ID,
    ModelCard,
    get_card,
    list_cards,
    register_local_path,
)

__all__ = [
    "DEFAULT_MODEL_ID",
    "ModelCard",
    "get_card",
    "list_cards",
    "load_causal_lm",
    "load_tokenizer",
    "model_status",
    "register_local_path",
    "resolve_weights",
]
