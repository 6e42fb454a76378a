"""Model references: what a model name points at, in one grammar for the whole code base.

Three forms name a model:

- a catalog id (``smollm2-135m-instruct``): the base model;
- a fine-tuned id (``ft:<base>:<suffix>:<run>``): the final adapter of a run;
- a checkpoint of a run: ``<fine-tuned id>@step-<N>`` (Tempering's own; ``@step-20`` and ``@step-000020``
  are the same) or ``<fine-tuned id>:ckpt-step-<N>`` (the id the fine-tuning API hands out, OpenAI's form).
  A checkpoint of an unfinished run works too: its fine-tuned id is the one the run will get.

The command line may also name a checkpoint folder by its path (``allow_paths``); over HTTP a reference is
an id, never a path, and a failed lookup says no more than "not found" (no server paths in messages).
``resolve`` returns a ``Target``; loading one is the serving layer's job. Imports no torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tempering.errors import ModelNotFoundError
from tempering.store import objects
from tempering.train import artifacts

_CHECKPOINT = re.compile(r"^(?P<model>ft:[^@]+?)(?:@step-|:ckpt-step-)(?P<step>\d{1,12})$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Target:
    name: str  # as the user gave it (canonical for checkpoints)
    kind: str  # "base", "fine-tuned", "checkpoint" or "upstream"
    base_model: str
    task: str = "chat"
    adapter: Path | None = None  # a fine-tuned model's or a checkpoint's folder: PEFT, or full weights
    # (``train.weights``: a folder holding model.safetensors is its own weights, not an adapter)
    labels: list[str] | None = None  # classification models
    input_format: str = "text"  # classification models: how texts are read (train.classify.encode_inputs)

    @property
    def full(self) -> bool:
        """Whether the target is a fully fine-tuned model (its own weights over the base's architecture)."""
        return artifacts.is_full(self.adapter)


@dataclass(frozen=True)
class Reference:
    """A parsed model name, before anything on disk is looked at."""

    kind: str  # "base", "fine-tuned" or "checkpoint"
    model: str  # the catalog id, or the fine-tuned id (without the checkpoint part)
    run_id: str | None = None
    step: int | None = None


def checkpoint_name(model_id: str, step: int) -> str:
    """Tempering's canonical checkpoint name: ``<fine-tuned id>@step-NNNNNN``."""
    return f"{model_id}@step-{step:06d}"


def api_checkpoint_id(model_id: str, step: int) -> str:
    """The checkpoint id the fine-tuning API hands out: ``<fine-tuned id>:ckpt-step-N``."""
    return f"{model_id}:ckpt-step-{step}"


def parse(name: str) -> Reference:
    """Parse a model name; raises ``ModelNotFoundError`` for a malformed fine-tuned id or checkpoint."""
    match = _CHECKPOINT.match(name)
    model = match["model"] if match else name
    if not artifacts.is_finetuned_id(model):
        return Reference("base", name)
    parts = model.split(":")
    if len(parts) != 4 or not _RUN_ID.match(parts[3]):
        form = "<fine-tuned id>@step-<N>" if match else "ft:<base>:<suffix>:<id>"
        raise ModelNotFoundError(f"{name!r} is not a valid model name; expected {form}", param="model")
    if match:
        return Reference("checkpoint", model, parts[3], int(match["step"]))
    return Reference("fine-tuned", model, parts[3])


def without_checkpoint(name: str) -> str:
    """The fine-tuned id under a checkpoint name (any other name unchanged)."""
    match = _CHECKPOINT.match(name)
    return match["model"] if match else name


def _run_facts(run_folder: Path) -> tuple[str, str, str, dict]:
    """(fine-tuned id, base model, task, final model's metadata or {}) of a run, from run.json and the final
    model if any."""
    run = artifacts.read_run(run_folder)
    if run is None:
        raise ModelNotFoundError(f"no run {run_folder.name!r}", param="model")
    meta_path = run_folder / "model" / artifacts.METADATA
    objects.pull_folder(meta_path.parent, artifacts.METADATA)
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    model_id = artifacts.model_id_for(run["base_model"], run["config"].get("suffix"), run_folder.name)
    return model_id, run["base_model"], run["config"].get("task", "chat"), meta


def _checkpoint_target(folder: Path, shown: str, name: str | None = None) -> Target:
    if not (folder / artifacts.CHECKPOINT_MARKER).is_file():
        raise ModelNotFoundError(f"no complete checkpoint {shown!r}", param="model")
    run_folder = folder.parent.parent
    model_id, base, task, meta = _run_facts(run_folder)
    if task == "classification" and not meta.get("labels"):
        raise ModelNotFoundError(f"checkpoints of the classification run {run_folder.name} can be used once "
                                 "the run has finished (its labels are stored with the final model)", param="model")
    step = int(folder.name.removeprefix("step-"))
    return Target(name or checkpoint_name(model_id, step), "checkpoint", base, task, folder, meta.get("labels"),
                  artifacts.stored_input_format(meta))


def resolve(name: str, *, allow_paths: bool = False) -> Target:
    """The target a model name points at; raises ``ModelNotFoundError`` naming the accepted forms.
    ``allow_paths``: a checkpoint folder may be named by its path (the command line's convenience)."""
    from tempering.catalog import get_card

    if "\x00" in name:
        raise ModelNotFoundError("a model name cannot hold a NUL character", param="model")
    ref = parse(name)
    if ref.kind == "checkpoint":
        folder = artifacts.run_dir(ref.run_id) / "checkpoints" / f"step-{ref.step:06d}"
        objects.pull_folder(folder, artifacts.CHECKPOINT_MARKER)  # from a shared artifact store if not here
        target = _checkpoint_target(folder, name)
        if target.name != checkpoint_name(ref.model, ref.step):  # the run exists but under another id
            raise ModelNotFoundError(f"no checkpoint {name!r}", param="model")
        return target
    if ref.kind == "fine-tuned":
        folder, meta = artifacts.resolve_finetuned(name)
        return Target(name, "fine-tuned", meta["base_model"], meta.get("task", "chat"), folder, meta.get("labels"),
                      artifacts.stored_input_format(meta))
    if allow_paths and ("/" in name or name.startswith(".")):
        path = Path(name).expanduser()
        if path.is_dir() and any((path / f).is_file() for f in ("adapter_config.json", artifacts.FULL_WEIGHTS)):
            return _checkpoint_target(path.resolve(), name)
        if path.is_dir():
            raise ModelNotFoundError(f"{name} is not a checkpoint folder (no adapter_config.json or "
                                     f"{artifacts.FULL_WEIGHTS})", param="model")
    card = get_card(name)
    return Target(card.id, "base", card.id)
