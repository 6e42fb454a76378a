"""Checkpoints are data, never code: no code path in src/ unpickles or enables remote code (an AST scan of
our sources), a run resumes with pickle and ``torch.load`` made to raise, and a partial, tampered or
pre-safetensors checkpoint is refused with an error that names the file."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_ID, chat_example, write_jsonl
from safetensors.torch import load_file, save_file

import tempering
from tempering.train import TuneConfig, tune
from tempering.train.artifacts import resolve_finetuned
from tempering.train.checkpoint import (
    COMPLETE,
    LEGACY_STATE,
    STATE_JSON,
    STATE_TENSORS,
    CheckpointError,
    list_checkpoints,
)
from tempering.train.fit import RunCancelled

SRC = Path(tempering.__file__).parent

# ---- the static scan ----

UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve"}
# Functions that read (or write, for a later read) pickles or code: calling them at all is a finding.
CODE_LOADERS = {"torch.save", "torch.jit.load", "pandas.read_pickle", "numpy.lib.format.read_array"}
# Reasons for findings that are accepted; keys are (path relative to src/tempering, finding). None today:
# torch.distributed's broadcast_object_list (train.distributed) and Ray (jobs.executors) serialize objects
# in-process between our own processes, never from a file, and neither shows up as a finding here.
ALLOWED: dict[tuple[str, str], str] = {}


def _qualified_names(tree: ast.Module) -> dict[str, str]:
    """Local name → what it was imported as (``import numpy as np`` → np: numpy)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:  # ``import a.b`` binds a; ``import a.b as c`` binds c to a.b
                root = alias.name.split(".")[0]
                names[alias.asname or root] = alias.name if alias.asname else root
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, names: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([names.get(node.id, node.id), *reversed(parts)])


def _is_constant(node: ast.expr | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str) -> list[str]:
    """Every way ``source`` could unpickle a file or run code from a model repository, as short findings."""
    tree = ast.parse(source)
    names = _qualified_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: imports {m}" for m in modules
                      if m.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func, names) or ""
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            if name in ("torch.load", "torch.serialization.load") and not _is_constant(
                    keywords.get("weights_only"), True):
                found.append(f"line {node.lineno}: {name} without weights_only=True")
            elif name.split(".")[0] in UNPICKLING_MODULES or name in CODE_LOADERS:
                found.append(f"line {node.lineno}: calls {name}")
            elif name == "numpy.load" and "allow_pickle" in keywords and not _is_constant(
                    keywords["allow_pickle"], False):
                found.append(f"line {node.lineno}: numpy.load with allow_pickle")
            if "trust_remote_code" in keywords and not _is_constant(keywords["trust_remote_code"], False):
                found.append(f"line {node.lineno}: trust_remote_code not False")
        elif isinstance(node, ast.Dict):  # options built as a dict and passed on with **
            for key, value in zip(node.keys, node.values, strict=True):
                if (isinstance(key, ast.Constant) and key.value == "trust_remote_code"
                        and not _is_constant(value, False)):
                    found.append(f"line {node.lineno}: trust_remote_code not False")
    return found


@pytest.mark.parametrize("source", [
    "import pickle",
    "import dill as d",
    "from joblib import load",
    "import cloudpickle\ncloudpickle.loads(b'')",
    "import torch\ntorch.load('x')",
    "import torch as t\nt.load('x', weights_only=False)",
    "from torch import load\nload('x', weights_only=flag)",
    "import torch\ntorch.save({}, 'x')",
    "import numpy as np\nnp.load('x', allow_pickle=True)",
    "from transformers import AutoModel\nAutoModel.from_pretrained('x', trust_remote_code=True)",
    "options = {'trust_remote_code': True}",
])
def test_the_scan_finds_each_unsafe_pattern(source):
    assert unsafe_calls(source)


@pytest.mark.parametrize("source", [
    "import torch\ntorch.load('x', weights_only=True)",
    "import numpy as np\nnp.load('x')\nnp.load('x', allow_pickle=False)",
    "from transformers import AutoModel\nAutoModel.from_pretrained('x', trust_remote_code=False)",
    "import json\njson.loads('{}')",
    "from safetensors.torch import load_file\nload_file('x')",
])
def test_the_scan_passes_safe_code(source):
    assert unsafe_calls(source) == []


def test_no_code_path_unpickles_or_enables_remote_code():
    findings = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        for finding in unsafe_calls(path.read_text(encoding="utf-8")):
            what = finding.split(": ", 1)[1]
            if (relative, what) not in ALLOWED:
                findings.append(f"{relative} {finding}")
    assert findings == []


# ---- resuming without pickle ----

def _data(tmp_path: Path) -> tuple[Path, Path]:
    rows = [chat_example(f"Spell the number {i}.", f"The number {i} is spelled {i * 7}.") for i in range(20)]
    train, valid = rows[:16], rows[16:]
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "valid.jsonl", valid)


def _config(data: tuple[Path, Path]) -> TuneConfig:
    # 16 examples, batch 4: 4 steps per epoch; checkpoints at steps 3, 4 (epoch 1), 6 and 8 (epoch 2).
    return TuneConfig(model=TINY_ID, training_file=data[0], validation_file=data[1], seed=11,
                      checkpoint_every_steps=3, evaluate=False,
                      hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5.0})


def _interrupt(config: TuneConfig, at_step: int) -> Path:
    """Run ``config`` until it is cancelled at ``at_step``; the run folder."""
    steps = []
    with pytest.raises(RunCancelled):
        tune(config, on_event=lambda e: steps.append(e["data"].get("step") or 0),
             should_stop=lambda: max(steps, default=0) >= at_step)
    runs = [f for f in (Path(os.environ["TEMPERING_HOME"]) / "runs").iterdir()
            if json.loads((f / "run.json").read_text())["status"] == "cancelled"]
    assert len(runs) == 1
    return runs[0]


def _refuse(*args, **kwargs):
    raise AssertionError("something tried to unpickle")


def test_resume_reads_no_pickle_and_falls_back_past_a_half_written_checkpoint(tiny_model, tmp_path,
                                                                             monkeypatch):
    data = _data(tmp_path)
    reference = tune(_config(data))
    run = _interrupt(_config(data), at_step=7)
    assert [p.name for p in list_checkpoints(run)] == [f"step-00000{n}" for n in (3, 4, 6, 7)]
    # A crash while writing leaves no COMPLETE marker (atomic_dir makes that the only possible half state):
    (run / "checkpoints" / "step-000007" / COMPLETE).unlink()

    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                         (torch.serialization, "load")):
        monkeypatch.setattr(target, name, _refuse)
    events = []
    resumed = tune(_config(data), resume=True, on_event=events.append)
    monkeypatch.undo()

    assert [e["data"]["step"] for e in events if e["type"] == "resumed"] == [6]  # the last complete one
    ours, theirs = (load_file(resolve_finetuned(r.model_id)[0] / "adapter_model.safetensors")
                    for r in (resumed, reference))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # bit for bit
    assert (resumed.train_loss, resumed.valid_loss) == (reference.train_loss, reference.valid_loss)


# ---- refusing what is not a checkpoint we wrote ----

@pytest.fixture(scope="module")
def interrupted_home(tiny_model_dir, tmp_path_factory) -> tuple[Path, TuneConfig]:
    """A home with one run cancelled at step 7 (complete checkpoints 3, 4, 6 and 7), made once per module."""
    from tempering.catalog import register_local_path
    from tempering.settings import reset_settings

    root = tmp_path_factory.mktemp("interrupted")
    config = _config(_data(root))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPERING_HOME", str(root / "home"))
        reset_settings()
        register_local_path(TINY_ID, tiny_model_dir)
        _interrupt(config, at_step=7)
    reset_settings()
    return root / "home", config


def _tamper_json(folder: Path, change) -> None:
    document = json.loads((folder / STATE_JSON).read_text())
    change(document)
    (folder / STATE_JSON).write_text(json.dumps(document))


def _reshape_exp_avg(folder: Path) -> None:
    """A consistent file and manifest, but a moment tensor of a shape no parameter of the model has."""
    tensors = load_file(folder / STATE_TENSORS)
    tensors["optimizer.state.0.exp_avg"] = torch.zeros(3, 5)
    save_file(tensors, folder / STATE_TENSORS)
    _tamper_json(folder, lambda d: d["tensors"].update({"optimizer.state.0.exp_avg": {"dtype": "float32",
                                                                                       "shape": [3, 5]}}))


def _swap_manifest_shape(folder: Path) -> None:
    _tamper_json(folder, lambda d: d["tensors"]["optimizer.state.0.exp_avg"].update({"shape": [1]}))


def _drop_adapter_tensor(folder: Path) -> None:
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors.pop(min(tensors))
    save_file(tensors, folder / "adapter_model.safetensors")


def _truncate_rng(folder: Path) -> None:
    tensors = load_file(folder / STATE_TENSORS)
    tensors["rng.torch"] = tensors["rng.torch"][:100].clone()
    save_file(tensors, folder / STATE_TENSORS)
    _tamper_json(folder, lambda d: d["tensors"]["rng.torch"].update({"shape": [100]}))


TAMPERING = {
    "missing tensors": (lambda f: (f / STATE_TENSORS).unlink(), STATE_TENSORS, "missing"),
    "missing json": (lambda f: (f / STATE_JSON).unlink(), STATE_JSON, "missing"),
    "truncated json": (lambda f: (f / STATE_JSON).write_text((f / STATE_JSON).read_text()[:200]), STATE_JSON,
                       "not valid JSON"),
    "garbage tensors": (lambda f: (f / STATE_TENSORS).write_bytes((8).to_bytes(8, "little") + b"{}garbage"),
                        STATE_TENSORS, "not a readable safetensors file"),
    "wrong moment shape": (_reshape_exp_avg, STATE_TENSORS, "from another model"),
    "manifest mismatch": (_swap_manifest_shape, STATE_TENSORS, "training_state.json says"),
    "unknown tag": (lambda f: _tamper_json(f, lambda d: d["scheduler"].update(
        {"base_lrs": {"__reduce__": ["os.system", "true"]}})), STATE_JSON, "unknown tag"),
    "extra scheduler key": (lambda f: _tamper_json(f, lambda d: d["scheduler"].update({"optimizer": None})),
                            STATE_JSON, "scheduler has keys"),
    "negative position": (lambda f: _tamper_json(f, lambda d: d["position"].update({"batches_done": -1})),
                          STATE_JSON, "position.batches_done"),
    "adapter missing a tensor": (_drop_adapter_tensor, "adapter_model.safetensors", "missing"),
    "short rng state": (_truncate_rng, STATE_TENSORS, "rng.torch"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_checkpoint_is_refused_naming_the_file(case, interrupted_home, tempering_home, tiny_model):
    home, config = interrupted_home
    shutil.copytree(home / "runs", tempering_home / "runs")
    latest = list_checkpoints(next((tempering_home / "runs").iterdir()))[-1]
    tamper, file_name, message = TAMPERING[case]
    tamper(latest)

    with pytest.raises(CheckpointError, match=message) as refused:
        tune(config, resume=True)
    assert str(latest / file_name) in str(refused.value)
    assert "resume from step-000006, the previous complete checkpoint" in str(refused.value)


def test_a_pickled_checkpoint_from_before_is_refused_unread(interrupted_home, tempering_home, tiny_model,
                                                            tmp_path):
    home, config = interrupted_home
    shutil.copytree(home / "runs", tempering_home / "runs")
    latest = list_checkpoints(next((tempering_home / "runs").iterdir()))[-1]
    (latest / STATE_JSON).unlink()
    (latest / STATE_TENSORS).unlink()
    # A pickle that creates a folder when unpickled: os.mkdir(<proof>), written by hand (protocol 0).
    def payload(path: Path) -> bytes:
        return b"cos\nmkdir\n(V" + str(path).encode() + b"\ntR."

    pickle.loads(payload(tmp_path / "control"))  # noqa: S301 - shows the payload is live when unpickled
    assert (tmp_path / "control").is_dir()
    proof = tmp_path / "unpickled"
    (latest / LEGACY_STATE).write_bytes(payload(proof))

    with pytest.raises(CheckpointError, match="pickle, which is never loaded") as refused:
        tune(config, resume=True)
    assert str(latest / LEGACY_STATE) in str(refused.value)
    assert not proof.exists()


# ---- the format itself, without a model ----

def test_training_state_round_trips_exactly_including_cuda_rng(tmp_path, monkeypatch):
    """Optimizer and scheduler state dicts come back equal (tuples, int keys, tensors, dtypes), and every RNG
    state in the form its setter takes; the CUDA branch runs with a stand-in device, as CI has no GPU."""
    import random

    import numpy as np

    from tempering.train.checkpoint import _rng, read_training_state, write_training_state

    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, betas=(0.8, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    cuda_states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_states)
    random.gauss(0, 1)  # a cached Gaussian in both generators' states, so those fields are exercised too
    np.random.standard_normal()  # the global state is the one checkpoints keep

    position = {"step": 1, "epoch": 1, "batches_done": 1, "epoch_sums": {"loss": 0.1 + 0.2, "tokens": 3}}
    write_training_state(tmp_path, optimizer=optimizer, scheduler=scheduler, position=position)
    (tmp_path / COMPLETE).write_text("ok\n")
    state, tensors = read_training_state(tmp_path)

    assert state["position"] == position
    saved, live = state["optimizer"], optimizer.state_dict()
    assert saved["param_groups"] == live["param_groups"] and saved["param_groups"][0]["betas"] == (0.8, 0.95)
    assert saved["state"].keys() == live["state"].keys() == {0, 1}
    for index, entries in live["state"].items():
        for name, value in entries.items():
            restored = saved["state"][index][name]
            assert torch.equal(restored, value) and restored.dtype == value.dtype
    assert state["scheduler"] == scheduler.state_dict()
    rng = _rng(state["rng"], problem=None)
    assert [torch.equal(a, b) for a, b in zip(rng["cuda"], cuda_states, strict=True)] == [True, True]
    assert rng["python"] == random.getstate()
    expected = np.random.get_state()
    assert rng["numpy"][0] == expected[0] and np.array_equal(rng["numpy"][1], expected[1])
    assert rng["numpy"][2:] == tuple(expected[2:])
    assert torch.equal(rng["torch"], torch.get_rng_state())
    assert all(t.dtype == torch.uint8 for k, t in tensors.items() if k.startswith("rng."))


def test_a_classification_run_resumes_exactly(tiny_model, tmp_path):
    """The head is a PEFT ``modules_to_save`` module: its tensors are in the adapter file that resume checks."""
    rows = ["text,category"] + [f"help with my {word} number {i},{word}" for word in ("refund", "card", "wire")
                                for i in range(8)]
    data = tmp_path / "intents.csv"
    data.write_text("\n".join(rows) + "\n")
    config = TuneConfig(model=TINY_ID, task="classification", training_file=data, validation_file=data, seed=4,
                        checkpoint_every_steps=4, evaluate=False,
                        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10.0})
    reference = tune(config)
    _interrupt(config, at_step=9)  # mid epoch 2 of 6 steps each, past the step-8 checkpoint
    resumed = tune(config, resume=True)
    ours, theirs = (load_file(resolve_finetuned(r.model_id)[0] / "adapter_model.safetensors")
                    for r in (resumed, reference))
    assert any("score" in k or "classifier" in k for k in ours)  # the head travelled with the adapter
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert resumed.valid_loss == reference.valid_loss
