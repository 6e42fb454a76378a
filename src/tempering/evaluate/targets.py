"""What a model name given to an evaluation points at, and loading it the way it is served.

Three forms are accepted:

- a catalog id (``smollm2-135m-instruct``): the base model;
- a fine-tuned id (``ft:<base>:<suffix>:<run>``): the final adapter of a run;
- a checkpoint: ``<fine-tuned id>@step-<N>`` (``@step-20`` and ``@step-000020`` are the same), the API's
  checkpoint id ``<fine-tuned id>:ckpt-step-<N>``, or the path of a
  checkpoint folder (``TEMPERING_HOME/runs/<run>/checkpoints/step-000020``). A checkpoint of an unfinished
  run works too: its fine-tuned id is the one the run will get (``run.json`` holds the base and suffix).

Chat models load through ``serve.local`` (adapter merged, as served); classification models through
``serve.classify``. Knows nothing about metrics or reports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tempering.errors import ModelNotFoundError
from tempering.train import artifacts
from tempering.train.checkpoint import COMPLETE

# ``@step-N`` is Tempering's own; ``:ckpt-step-N`` is the checkpoint id the fine-tuning API hands out (OpenAI's form).
_CHECKPOINT = re.compile(r"^(?P<model>ft:[^@]+?)(?:@step-|:ckpt-step-)(?P<step>\d+)$")


@dataclass(frozen=True)
class Target:
    name: str  # as the user gave it (canonical for checkpoints)
    kind: str  # "base", "fine-tuned" or "checkpoint"
    base_model: str
    task: str = "chat"
    adapter: Path | None = None  # the PEFT folder: a fine-tuned model's or a checkpoint's
    labels: list[str] | None = None  # classification models


def checkpoint_name(model_id: str, step: int) -> str:
    return f"{model_id}@step-{step:06d}"


def _run_facts(run_folder: Path) -> tuple[str, str, str, list[str] | None]:
    """(fine-tuned id, base model, task, labels) of a run, from run.json and the final model if any."""
    run = artifacts.read_run(run_folder)
    if run is None:
        raise ModelNotFoundError(f"no run in {run_folder} (run.json is missing)", param="model")
    meta_path = run_folder / "model" / artifacts.METADATA
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    model_id = artifacts.model_id_for(run["base_model"], run["config"].get("suffix"), run_folder.name)
    return model_id, run["base_model"], run["config"].get("task", "chat"), meta.get("labels")


def _checkpoint_target(folder: Path, name: str | None = None) -> Target:
    if not (folder / COMPLETE).is_file():
        raise ModelNotFoundError(f"no complete checkpoint at {folder}", param="model")
    run_folder = folder.parent.parent
    model_id, base, task, labels = _run_facts(run_folder)
    if task == "classification" and not labels:
        raise ModelNotFoundError(f"checkpoints of the classification run {run_folder.name} can be evaluated "
                                 "once the run has finished (its labels are stored with the final model)",
                                 param="model")
    step = int(folder.name.removeprefix("step-"))
    return Target(name or checkpoint_name(model_id, step), "checkpoint", base, task, folder, labels)


def resolve(name: str) -> Target:
    """The target a model name points at; raises ``ModelNotFoundError`` naming the accepted forms."""
    from tempering.catalog import get_card

    match = _CHECKPOINT.match(name)
    if match:
        parts = match["model"].split(":")
        if len(parts) != 4 or not parts[3]:
            raise ModelNotFoundError(f"{name!r}: expected <fine-tuned id>@step-<N>", param="model")
        folder = artifacts.run_dir(parts[3]) / "checkpoints" / f"step-{int(match['step']):06d}"
        return _checkpoint_target(folder)
    if artifacts.is_finetuned_id(name):
        folder, meta = artifacts.resolve_finetuned(name)
        return Target(name, "fine-tuned", meta["base_model"], meta.get("task", "chat"), folder, meta.get("labels"))
    path = Path(name).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return _checkpoint_target(path.resolve())
    if path.is_dir():
        raise ModelNotFoundError(f"{name} is not a checkpoint folder (no adapter_config.json)", param="model")
    return Target(get_card(name).id, "base", get_card(name).id)


def load_chat(target: Target, device: str = "auto"):
    """A ``serve.local.ChatModel`` for a chat target: the served path, the adapter merged."""
    from tempering.serve.local import load_chat_model

    if target.kind != "checkpoint":
        return load_chat_model(target.name if target.kind == "fine-tuned" else target.base_model, device)
    from peft import PeftModel

    chat = load_chat_model(target.base_model, device)
    chat.model = PeftModel.from_pretrained(chat.model, target.adapter).merge_and_unload().eval()
    chat.model_id = target.name
    return chat


def load_classifier(target: Target, device: str = "auto"):
    """A ``serve.classify.Classifier`` for a classification target (final model or checkpoint)."""
    from peft import PeftModel

    from tempering.catalog import get_card, load_tokenizer, resolve_weights
    from tempering.hardware import select_placement
    from tempering.serve.classify import Classifier, load_classifier_model
    from tempering.train.classify import load_classifier as load_head

    if target.kind == "fine-tuned":
        return load_classifier_model(target.name, device)
    card = get_card(target.base_model)  # a checkpoint: the same assembly as serve.classify, another folder
    tokenizer = load_tokenizer(card)
    model = load_head(resolve_weights(card), select_placement(device), dict(enumerate(target.labels)))
    model.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(model, target.adapter).eval()
    return Classifier(target.name, tokenizer, model, target.labels, card.context_length)
