"""A fine-tuned model's own weights, whatever the adapter kind: one place that saves and loads them.

A LoRA or DoRA model is a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) applied
to the catalog base. A fully fine-tuned model (``adapter: full``) is its own weights: ``model.safetensors``
holding every tensor of the model's state (a tensor tied to another, such as an output head sharing the input
embeddings, stored once), loaded over the catalog base's architecture. Final models and checkpoints use the
same two layouts, so everything that loads one (serving, evaluation, export, resume, best-checkpoint
selection) goes through here and never asks which it is. Safetensors only: nothing here unpickles.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tempering.errors import ModelNotFoundError
from tempering.train.artifacts import FULL_WEIGHTS, is_full

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def full_state(model) -> dict[str, torch.Tensor]:
    """The model's state with every tensor once: a tied tensor is kept under its first name."""
    seen, state = set(), {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor
    return state


def trainable_state(model) -> dict[str, torch.Tensor]:
    """What a checkpoint of this model stores: the adapter's state (PEFT) or the whole model's."""
    if is_peft(model):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return full_state(model)


def weights_file(folder: Path) -> Path:
    return Path(folder) / (FULL_WEIGHTS if is_full(folder) else ADAPTER_WEIGHTS)


def save(model, folder: Path) -> None:
    """Write the model's own weights into ``folder`` (an adapter folder, or ``model.safetensors``)."""
    if is_peft(model):
        model.save_pretrained(folder)
        return
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in full_state(model).items()}
    save_file(state, Path(folder) / FULL_WEIGHTS, metadata={"format": "pt", "tempering": "full"})


def shape_difference(found: dict, expected: dict) -> str:
    """'' when the two {name: tensor or shape} maps agree; else what differs, briefly."""
    found = {k: tuple(getattr(v, "shape", v)) for k, v in found.items()}
    expected = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    reshaped = [f"{k} {list(found[k])} (expected {list(expected[k])})"
                for k in sorted(set(found) & set(expected)) if found[k] != expected[k]]
    parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
             f"shapes {reshaped[:3]}" if reshaped else ""]
    return ", ".join(p for p in parts if p)


def set_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    """Put a state read by ``read_state`` (and checked against ``trainable_state``) into the live model."""
    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
        return
    with torch.no_grad():
        live = full_state(model)
        for name, tensor in state.items():
            live[name].copy_(tensor.to(live[name].dtype))


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(weights_file(folder))


def load_full(model, folder: Path):
    """Overlay the full weights in ``folder`` on ``model`` (the same architecture, freshly loaded)."""
    state = read_state(folder)
    difference = shape_difference(state, full_state(model))
    if difference:
        raise ModelNotFoundError(f"the weights of {Path(folder).name} do not fit the base model: {difference}",
                                 param="model")
    set_trainable_state(model, state)
    return model


def load_onto(model, folder: Path, *, merge: bool = True, trainable: bool = False):
    """The base ``model`` with the fine-tuned weights of ``folder``: full weights overlaid, or the PEFT adapter
    applied (merged into the weights when ``merge``: as cheap to run as the base; kept apart when
    ``trainable``, to continue training it)."""
    if is_full(folder):
        return load_full(model, folder)
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, folder, is_trainable=trainable)
    return peft_model.merge_and_unload() if merge and not trainable else peft_model


def load_trainable(model, folder: Path) -> None:
    """Replace the live model's trained weights by a checkpoint's (the run's model: same kind, same shapes)."""
    state = read_state(folder)
    difference = shape_difference(state, trainable_state(model))
    if difference:
        raise ModelNotFoundError(f"{Path(folder).name} does not fit this run's model: {difference}", param="model")
    set_trainable_state(model, state)
