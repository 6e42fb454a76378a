"""Checkpoints: everything needed to continue a run exactly, written so a crash never leaves a fake one,
and read without running code from the file.

A checkpoint folder ``checkpoints/step-<N>/`` holds::

    adapter_config.json, adapter_model.safetensors   the PEFT adapter (``save_pretrained``), or
    model.safetensors                                the whole model's weights (adapter full; ``weights``)
    training_state.safetensors                       every tensor of the training state: optimizer state
                                                     (``optimizer.state.<param index>.<name>``) and RNG
                                                     states as uint8 (``rng.torch``, ``rng.cuda.<i>``,
                                                     ``rng.python``, ``rng.numpy``)
    training_state.json                              everything else: the position (step, epoch, batches
                                                     done, the epoch's running loss), param-group
                                                     hyperparameters, the scheduler's state dict, the
                                                     rest of the RNG states, and a manifest of the tensors
    metrics.json
    COMPLETE                                         written last, inside a temp folder renamed into place

Reading uses safetensors and json only, never pickle: checkpoints may come from a shared bucket. A
checkpoint that is incomplete or does not match the model and optimizer it is restored into (missing
file, bad JSON, unknown or missing tensors, wrong shapes) raises ``CheckpointError`` naming the file before
anything is changed. ``latest_checkpoint`` ignores any folder without the marker, so a half-written one is
skipped and resume continues from the previous complete one; ``discard_partial`` removes the temp folders a
killed process left behind.

With a shared artifact store (``store.objects``) a checkpoint is published once complete: the run's own files
(run.json, events, results) first, then the checkpoint's files, then its ``COMPLETE`` object last, so a reader on
another machine never trusts a partial one. ``latest_checkpoint`` then also looks in the store and pulls a newer
complete checkpoint than this home holds (a job taken over from a worker on another machine). Knows nothing
about the training loop.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tempering.errors import TemperingError
from tempering.store import objects
from tempering.train import weights
from tempering.train.artifacts import atomic_dir, publish_run

COMPLETE = "COMPLETE"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
LEGACY_STATE = "training_state.pt"  # a pickle written before format 1; never loaded
FORMAT, VERSION = "tempering-training-state", 1
_WORD = np.dtype("<u4")  # Mersenne Twister words, stored little-endian as bytes


class CheckpointError(TemperingError):
    """A checkpoint that cannot be resumed from: incomplete, tampered with, or of another run's shape."""

    code = "invalid_checkpoint"


@dataclass
class TrainingState:
    step: int
    epoch: int  # the epoch to train (1-based)
    batches_done: int  # batches of that epoch already trained
    epoch_sums: dict  # the epoch's running train loss: {"loss": float, "tokens": int}


# ---- saving ----

def save_checkpoint(run_folder: Path, *, model, optimizer, scheduler, step: int, epoch: int,
                    batches_done: int, metrics: dict, epoch_sums: dict) -> Path:
    target = run_folder / "checkpoints" / f"step-{step:06d}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target) as tmp:
        weights.save(model, tmp)  # the adapter, or (adapter full) the whole model's model.safetensors
        write_training_state(tmp, optimizer=optimizer, scheduler=scheduler, position={
            "step": step, "epoch": epoch, "batches_done": batches_done, "epoch_sums": dict(epoch_sums)})
        (tmp / "metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=2))
        (tmp / COMPLETE).write_text("ok\n")
    publish_run(run_folder)  # the results up to this step, before the checkpoint a reader would trust
    objects.publish_folder(target, COMPLETE)
    return target


def write_training_state(folder: Path, *, optimizer, scheduler, position: dict) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    document = {
        "format": FORMAT,
        "version": VERSION,
        "position": position,
        "optimizer": _encode(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": _encode(scheduler.state_dict(), "scheduler", tensors),
        "rng": _rng_states(tensors),
    }
    document["tensors"] = {k: {"dtype": _dtype_name(t), "shape": list(t.shape)} for k, t in tensors.items()}
    save_file(tensors, folder / STATE_TENSORS)
    (folder / STATE_JSON).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def _encode(value, key: str, tensors: dict):
    """JSON for ``value``, each tensor moved to ``tensors[key]`` and referenced as ``{"__tensor__": key}``;
    tuples and int-keyed dicts (optimizer state) are tagged so they read back as they were."""
    if isinstance(value, torch.Tensor):
        if key in tensors:
            raise CheckpointError(f"two tensors would be stored under {key!r}")
        tensors[key] = value.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, str) and not k.startswith("__") for k in value):
        return {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, dict) and all(type(k) is int for k in value):
        return {"__int_keys__": {str(k): _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}}
    raise CheckpointError(f"{key}: a {type(value).__name__} cannot be stored in a checkpoint (tensors and "
                          f"JSON values only)")


def _rng_states(tensors: dict) -> dict:
    version, words, gauss_next = random.getstate()
    tensors["rng.python"] = _bytes(np.asarray(words, dtype=_WORD))
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()  # numpy's global state
    tensors["rng.numpy"] = _bytes(np.asarray(keys, dtype=_WORD))
    tensors["rng.torch"] = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for i, state in enumerate(cuda):
        tensors[f"rng.cuda.{i}"] = state.cpu()
    return {
        "torch": {"__tensor__": "rng.torch"},
        "cuda": [{"__tensor__": f"rng.cuda.{i}"} for i in range(len(cuda))],
        "python": {"version": version, "words": {"__tensor__": "rng.python"}, "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": {"__tensor__": "rng.numpy"}, "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
    }


def _bytes(words: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(words.view(np.uint8).copy())


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


# ---- reading ----

def read_training_state(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The decoded ``training_state.json`` (tensor references replaced by tensors) and the raw tensors.
    Checks completeness and the JSON ↔ tensors manifest; knows nothing of the model."""
    problem = _Problem(folder)
    if not (folder / COMPLETE).is_file():
        raise problem(COMPLETE, "missing: the checkpoint was never completed")
    json_path, tensors_path = folder / STATE_JSON, folder / STATE_TENSORS
    if not json_path.is_file() and (folder / LEGACY_STATE).is_file():
        raise problem(LEGACY_STATE, "written by an older Tempering as a pickle, which is never loaded "
                      "(it could run code); this run cannot be resumed: start it again without --resume")
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise problem(STATE_JSON, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise problem(STATE_JSON, f"not valid JSON ({exc})") from None
    header = (document.get("format"), document.get("version")) if isinstance(document, dict) else None
    if header != (FORMAT, VERSION):
        raise problem(STATE_JSON, f"not a {FORMAT} file of version {VERSION}")
    try:
        from safetensors.torch import load_file

        tensors = load_file(tensors_path)
    except FileNotFoundError:
        raise problem(STATE_TENSORS, "missing") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own errors for a corrupt header
        raise problem(STATE_TENSORS, f"not a readable safetensors file ({exc})") from None
    manifest = document.get("tensors")
    if not isinstance(manifest, dict) or set(manifest) != set(tensors):
        raise problem(STATE_TENSORS, "its tensors are not the ones training_state.json lists "
                      f"(missing {sorted(set(manifest or {}) - set(tensors))}, "
                      f"unexpected {sorted(set(tensors) - set(manifest or {}))})")
    for key, tensor in tensors.items():
        if manifest[key] != {"dtype": _dtype_name(tensor), "shape": list(tensor.shape)}:
            raise problem(STATE_TENSORS, f"tensor {key} is {_dtype_name(tensor)}{list(tensor.shape)}, "
                          f"training_state.json says {manifest[key]}")
    try:
        decoded = {k: _decode(document[k], tensors) for k in ("position", "optimizer", "scheduler", "rng")}
    except (KeyError, TypeError, ValueError) as exc:
        raise problem(STATE_JSON, f"malformed ({exc})") from None
    return decoded, tensors


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    tags = [k for k in value if k.startswith("__")]
    if not tags:
        return {k: _decode(v, tensors) for k, v in value.items()}
    if len(value) != 1:
        raise ValueError(f"a tagged value has other keys: {sorted(value)}")
    tag, inner = tags[0], value[tags[0]]
    if tag == "__tensor__":
        if not isinstance(inner, str) or inner not in tensors:
            raise ValueError(f"it refers to a tensor {inner!r} that is not stored")
        return tensors[inner]
    if tag == "__tuple__" and isinstance(inner, list):
        return tuple(_decode(v, tensors) for v in inner)
    if tag == "__int_keys__" and isinstance(inner, dict):
        return {int(k): _decode(v, tensors) for k, v in inner.items()}
    raise ValueError(f"unknown tag {tag!r}")


def restore_checkpoint(folder: Path, *, model, optimizer, scheduler) -> TrainingState:
    """Load adapter, optimizer, scheduler and RNG states from ``folder`` into the live objects and return
    the data position. Everything is checked against the live objects before any of them changes."""
    from safetensors.torch import load_file

    problem = _Problem(folder)
    state, _ = read_training_state(folder)
    position = _position(state["position"], problem)
    name = weights.ADAPTER_WEIGHTS if weights.is_peft(model) else weights.FULL_WEIGHTS
    try:
        adapter = load_file(folder / name)
    except FileNotFoundError:
        raise problem(name, "missing") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own errors for a corrupt header
        raise problem(name, f"not a readable safetensors file ({exc})") from None
    difference = weights.shape_difference(adapter, weights.trainable_state(model))
    if difference:
        raise problem(name, f"does not match this run's model: {difference}")
    _check_optimizer(state["optimizer"], optimizer, problem)
    _check_same_keys(state["scheduler"], scheduler.state_dict(), "scheduler", problem)
    rng = _rng(state["rng"], problem)

    weights.set_trainable_state(model, adapter)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise problem(STATE_JSON, f"the optimizer or scheduler state does not load ({exc})") from None
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return position


class _Problem:
    """Builds the error for a file of one checkpoint, with what the user can do about it."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, name: str, message: str) -> CheckpointError:
        earlier = [p for p in list_checkpoints(self.folder.parent.parent) if p.name < self.folder.name]
        hint = (f"; remove {self.folder} to resume from {earlier[-1].name}, the previous complete checkpoint"
                if earlier and name != LEGACY_STATE else "")
        return CheckpointError(f"cannot resume from {self.folder / name}: {message}{hint}", param="resume")


def _position(raw, problem: _Problem) -> TrainingState:
    def whole(key, minimum):
        value = raw.get(key) if isinstance(raw, dict) else None
        if type(value) is not int or value < minimum:
            raise problem(STATE_JSON, f"malformed: position.{key} must be an integer ≥ {minimum}, "
                          f"not {value!r}")
        return value

    sums = raw.get("epoch_sums") if isinstance(raw, dict) else None
    if (not isinstance(sums, dict) or set(sums) != {"loss", "tokens"} or type(sums["tokens"]) is not int
            or type(sums["loss"]) not in (int, float)):
        raise problem(STATE_JSON, f"malformed: position.epoch_sums must be {{loss, tokens}}, not {sums!r}")
    return TrainingState(step=whole("step", 0), epoch=whole("epoch", 1),
                         batches_done=whole("batches_done", 0),
                         epoch_sums={"loss": float(sums["loss"]), "tokens": sums["tokens"]})


def _check_optimizer(saved, optimizer, problem: _Problem) -> None:
    live = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(live):
        raise problem(STATE_JSON, "malformed: the optimizer state is not {state, param_groups}")
    groups = saved["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(live["param_groups"]):
        raise problem(STATE_JSON, f"from another optimizer: {len(live['param_groups'])} parameter groups "
                      "expected")
    for i, (group, current) in enumerate(zip(groups, live["param_groups"], strict=True)):
        _check_same_keys(group, current, f"optimizer.param_groups.{i}", problem)
        if group["params"] != current["params"]:
            raise problem(STATE_JSON, f"from another model: parameter group {i} holds other parameters")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(saved["state"], dict):
        raise problem(STATE_JSON, "malformed: optimizer.state is not a mapping")
    for index, entries in saved["state"].items():
        if type(index) is not int or not 0 <= index < len(params) or not isinstance(entries, dict):
            raise problem(STATE_JSON, f"malformed: optimizer state for parameter {index}, of {len(params)}")
        for name, value in entries.items():
            shape = _state_shape(name, params[index].shape)
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != shape:
                raise problem(STATE_TENSORS, f"from another model: optimizer.state.{index}.{name} has shape "
                              f"{list(value.shape)}, expected {list(shape)} for its parameter "
                              f"{list(params[index].shape)}")


def _state_shape(name: str, param: torch.Size) -> torch.Size:
    """The shape an optimizer keeps a state tensor in: the parameter's, except Adafactor's factored second
    moments of a matrix (one value per row, one per column)."""
    if name == "exp_avg_sq_row" and len(param) >= 2:
        return param[:-1]
    if name == "exp_avg_sq_col" and len(param) >= 2:
        return param[:-2] + param[-1:]
    return param


def _check_same_keys(saved, live: dict, what: str, problem: _Problem) -> None:
    if not isinstance(saved, dict) or set(saved) != set(live):
        keys = sorted(saved) if isinstance(saved, dict) else saved
        raise problem(STATE_JSON, f"malformed: {what} has keys {keys}, expected {sorted(live)}")


def _rng(raw, problem: _Problem) -> dict:
    """The RNG states in the forms the setters take, each checked against this process's own."""
    try:
        python, numpy_state = raw["python"], raw["numpy"]
        states = {
            "torch": _uint8(raw["torch"], torch.get_rng_state().numel(), "rng.torch"),
            "cuda": [_uint8(t, t.numel(), f"rng.cuda.{i}") for i, t in enumerate(raw["cuda"])],
            "python": (python["version"], _words(python["words"], len(random.getstate()[1]), "rng.python"),
                       python["gauss_next"]),
            "numpy": (numpy_state["kind"],
                      np.asarray(_words(numpy_state["keys"], 624, "rng.numpy"), np.uint32),
                      numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]),
        }
        # Throwaway generators validate the states without side effects; nothing random is drawn.
        random.Random().setstate(states["python"])  # noqa: S311 - validation only, see above
        np.random.RandomState().set_state(states["numpy"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise problem(STATE_JSON, f"malformed RNG state ({exc})") from None
    except _BadTensor as exc:
        raise problem(STATE_TENSORS, str(exc)) from None
    return states


class _BadTensor(Exception):
    pass


def _uint8(tensor, numel: int, key: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.shape != (numel,):
        raise _BadTensor(f"{key} must be {numel} uint8 bytes")
    return tensor


def _words(tensor, count: int, key: str) -> tuple[int, ...]:
    data = _uint8(tensor, count * _WORD.itemsize, key).numpy()
    return tuple(int(w) for w in data.view(_WORD))


# ---- finding ----

def list_checkpoints(run_folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = run_folder / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / COMPLETE).is_file())


def known_checkpoints(run_folder: Path) -> list[Path]:
    """Complete checkpoints here or, with a shared artifact store, there (a worker that took the run over from
    another machine has only the one it resumed from), oldest first. One that is only there is not here until
    ``objects.pull_folder``; its ``metrics.json`` reads through ``objects.fetch_bytes``."""
    names = {p.name for p in list_checkpoints(run_folder)}
    names.update(objects.remote_markers(run_folder / "checkpoints", COMPLETE))
    return [run_folder / "checkpoints" / name for name in sorted(names)]


def latest_checkpoint(run_folder: Path) -> Path | None:
    """The newest complete checkpoint, here or (pulled from there) in a shared artifact store."""
    complete = list_checkpoints(run_folder)
    shared = objects.remote_markers(run_folder / "checkpoints", COMPLETE)
    newer = [name for name in shared if not complete or name > complete[-1].name]
    for name in reversed(newer):
        if objects.pull_folder(run_folder / "checkpoints" / name, COMPLETE):
            return run_folder / "checkpoints" / name
    return complete[-1] if complete else None


_PARTIAL = re.compile(r"\.step-\d+\.(\d+)\.tmp")  # ``atomic_dir``'s temp folder: .<target>.<pid>.tmp


def discard_partial(run_folder: Path) -> list[Path]:
    """Remove the temp folders of checkpoint writes whose process has died (killed mid-write: they never
    became checkpoints, and nothing reads them). A live process's write on this machine is left alone."""
    folder = run_folder / "checkpoints"
    removed = []
    for path in folder.iterdir() if folder.is_dir() else []:
        match = _PARTIAL.fullmatch(path.name)
        if match and path.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
