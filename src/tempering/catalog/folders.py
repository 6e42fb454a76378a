"""Checking a local folder of Hugging Face weights before the catalog points an id at it: safetensors
only, a config, and the facts a card needs (family, context length, parameter count). Loads no model.
"""

from __future__ import annotations

import json
from pathlib import Path

from tempering.errors import ModelUnavailableError


def describe_local_weights(folder: Path) -> dict:
    """Check a folder of Hugging Face weights and read family, context length and parameter count."""
    from safetensors import safe_open

    if not folder.is_dir():
        raise ModelUnavailableError(f"{folder} is not a folder", param="path")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelUnavailableError(f"{folder} has no config.json: not a Hugging Face model folder")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickles = [p.name for p in folder.glob("*.bin")]
        hint = f" (found {', '.join(pickles)}: pickle weights are never loaded)" if pickles else ""
        raise ModelUnavailableError(f"{folder} has no *.safetensors weights{hint}")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    parameters = 0
    for shard in shards:
        with safe_open(shard, framework="numpy") as fh:
            for key in fh.keys():  # noqa: SIM118 - a safetensors handle is not iterable, it has keys()
                n = 1
                for dim in fh.get_slice(key).get_shape():
                    n *= dim
                parameters += n
    return {
        "family": config.get("model_type", "unknown"),
        "context_length": int(config.get("max_position_embeddings") or 2048),
        "parameters": parameters,
    }
