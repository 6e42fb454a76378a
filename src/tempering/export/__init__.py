"""Exporting a model out of Tempering: folders that other tools load without any Tempering code.

``export_model(name, format, out)`` takes any model name ``train.refs.resolve`` accepts (a fine-tuned
id, a checkpoint, a catalog id) and writes one folder:

- ``peft``: the PEFT adapter as trained (``adapter_config.json``, ``adapter_model.safetensors``, and
  ``tempering.json`` when the model has one) plus the tokenizer, for ``PeftModel.from_pretrained(base, DIR)``;
- ``merged``: the adapter merged into the base weights, saved as safetensors with config, generation config
  and tokenizer, for ``AutoModelForCausalLM`` (chat) or ``AutoModelForSequenceClassification``
  (classification, with ``id2label``/``label2id``). A catalog id exports its float weights as they are;
- ``gguf``: the adapter merged into the base, as one ``model.gguf`` for llama.cpp, Ollama and LM Studio
  (``export.gguf``: f16 by default, f32, bf16 or q8_0 through ``dtype``), the chat template in its metadata,
  and an Ollama ``Modelfile`` beside it, and for a fine-tuned model its adapter alone in llama.cpp's LoRA-GGUF
  form (``adapter.gguf``). Chat models of the Llama and Phi-3 architectures.

A fully fine-tuned model (``adapter: full``) has no adapter: ``merged`` and ``gguf`` write its own weights
(loaded over the base's architecture), and ``peft`` is refused naming the format.

Every export also holds ``tempering-export.json`` (what was exported from what). The folder is built beside
the target and renamed into place, so a crash never leaves a half export that looks whole. Knows nothing
about the CLI or HTTP.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tempering.errors import InvalidConfigError, ModelNotFoundError
from tempering.train import artifacts
from tempering.train import weights as fine_tuned_weights
from tempering.train.refs import Target, resolve

FORMATS = ("peft", "merged", "gguf")
DTYPES = ("auto", "float32", "bfloat16", "float16", "q8_0")  # q8_0: GGUF only
GGUF_TYPES = {"auto": "f16", "float16": "f16", "float32": "f32", "bfloat16": "bf16", "q8_0": "q8_0"}
MARKER = "tempering-export.json"  # written last inside the temp folder; marks a folder --force may replace
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", artifacts.METADATA)

@dataclass(frozen=True)
class ExportResult:
    model: str
    kind: str  # "base", "fine-tuned" or "checkpoint"
    format: str
    task: str
    path: Path
    files: list[str] = field(default_factory=list)
    dtype: str | None = None  # of the merged weights; None for an adapter

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def default_out(model: str, fmt: str) -> Path:
    """``./<model id with every run of unsafe characters as one '-'>-<format>``."""
    safe = re.sub(r"[^A-Za-z0-9._]+", "-", model).strip("-.") or "model"
    return Path(f"{safe}-{fmt}")


def export_model(model: str, fmt: str, out: Path | None = None, *, force: bool = False,
                 dtype: str = "auto", allow_paths: bool = False) -> ExportResult:
    """Write ``model`` in ``fmt`` to ``out`` (default ``default_out``); returns what was written.
    ``allow_paths``: ``model`` may be a checkpoint folder's path (the command line's convenience)."""
    problems = []
    if fmt not in FORMATS:
        problems.append(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if dtype not in DTYPES:
        problems.append(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    if problems:
        raise InvalidConfigError("; ".join(problems), param="format" if fmt not in FORMATS else "dtype")
    if dtype == "q8_0" and fmt != "gguf":
        raise InvalidConfigError("dtype q8_0 is a GGUF quantization: use it with --format gguf", param="dtype")
    if dtype != "auto" and fmt == "peft":  # an adapter is saved as trained; only merged weights take a dtype
        raise InvalidConfigError(f"dtype {dtype} applies to merged and GGUF exports; a PEFT adapter is written as "
                                 "trained (leave dtype auto)", param="dtype")
    target = resolve(model, allow_paths=allow_paths)
    if fmt == "gguf" and target.task != "chat":
        raise InvalidConfigError(f"{target.name} is a {target.task} model: GGUF export is for chat models "
                                 "(llama.cpp has no classification head); use --format merged", param="format")
    if target.kind == "base" and fmt == "peft":
        raise InvalidConfigError(f"{target.name} is a base model: it has no adapter to export as {fmt}; "
                                 "use --format merged or gguf for a copy of its weights", param="format")
    if fmt == "peft" and fine_tuned_weights.is_full(target.adapter):
        raise InvalidConfigError(f"{target.name} was fully fine-tuned: it is its own weights, not an adapter; "
                                 "use --format merged (or gguf)", param="format")
    out = _check_out(Path(out) if out is not None else default_out(target.name, fmt), force)
    out.parent.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_dir(out) as tmp:
        if fmt == "peft":
            dtype_name = None
            _write_peft(target, tmp)
        elif fmt == "gguf":
            dtype_name = _write_gguf(target, tmp, GGUF_TYPES[dtype])
        else:
            dtype_name = _write_merged(target, tmp, dtype)
        files = sorted([*(p.name for p in tmp.iterdir()), MARKER])
        result = ExportResult(target.name, target.kind, fmt, target.task, out, files, dtype_name)
        _write_marker(tmp, target, result)
    return result


def _check_out(out: Path, force: bool) -> Path:
    """The absolute target folder. Replaces only an empty folder or, with --force, an earlier export."""
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InvalidConfigError(f"{out} exists and is not a folder", param="out")
    if out == Path.cwd() or out in Path.cwd().parents:
        raise InvalidConfigError(f"{out} holds the current folder; export to a new folder", param="out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise InvalidConfigError(f"{out} is not empty; pass --force to replace an earlier export there, "
                                     "or choose another --out", param="out")
        if not (out / MARKER).is_file():  # --force replaces exports only, never an arbitrary folder
            raise InvalidConfigError(f"{out} is not empty and holds no earlier export ({MARKER}); --force "
                                     "only replaces exports: remove it yourself or choose another --out",
                                     param="out")
    return out


def _write_peft(target: Target, folder: Path) -> None:
    from tempering.catalog import load_tokenizer

    for name in ADAPTER_FILES[:2]:
        if not (target.adapter / name).is_file():
            raise ModelNotFoundError(f"{target.adapter} has no {name}: the adapter is incomplete",
                                     param="model")
    for name in ADAPTER_FILES:
        if (target.adapter / name).is_file():
            shutil.copy2(target.adapter / name, folder / name)
    load_tokenizer(target.base_model).save_pretrained(folder)


def _torch_dtype(dtype: str, weights: Path):
    """The dtype to save in: the requested one, or (auto) the dtype the base weights are stored in."""
    import torch

    if dtype == "auto":
        config = json.loads((weights / "config.json").read_text(encoding="utf-8"))
        stored = config.get("dtype") or config.get("torch_dtype")
        dtype = stored if stored in DTYPES[1:] else "float32"
    return getattr(torch, dtype)


def _write_merged(target: Target, folder: Path, dtype: str) -> str:
    """Base (+ adapter merged) saved as plain Hugging Face safetensors; returns the dtype's name."""
    import torch

    from tempering.catalog import get_card, load_causal_lm, load_tokenizer, resolve_weights
    from tempering.hardware import Placement

    card = get_card(target.base_model)
    weights = resolve_weights(card)
    placement = Placement(torch.device("cpu"), _torch_dtype(dtype, weights))
    tokenizer = load_tokenizer(card)
    if target.task == "classification":
        from tempering.train.classify import load_classifier

        # The same assembly as serve.classify: the head's labels in the config, pad id for the pooling.
        model = load_classifier(weights, placement, dict(enumerate(target.labels)))
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = load_causal_lm(card, placement)
    if target.adapter is not None:
        model = fine_tuned_weights.load_onto(model, target.adapter)  # the adapter merged, or the full weights
    _plain_config(model, target.name)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return placement.dtype_name


def _write_gguf(target: Target, folder: Path, file_type: str) -> str:
    """``model.gguf`` (the adapter merged, float32 until written) and an Ollama ``Modelfile``; returns the
    file type."""
    import torch

    from tempering.catalog import get_card, load_causal_lm, load_tokenizer
    from tempering.export.gguf import write_model_gguf
    from tempering.hardware import Placement

    card = get_card(target.base_model)
    tokenizer = load_tokenizer(card)
    model = load_causal_lm(card, Placement(torch.device("cpu"), torch.float32))
    if target.adapter is not None:
        model = fine_tuned_weights.load_onto(model, target.adapter)  # the adapter merged, or the full weights
    write_model_gguf(model, tokenizer, card, folder / "model.gguf", file_type, target.name)
    (folder / "Modelfile").write_text(_modelfile(tokenizer), encoding="utf-8")
    if target.adapter is not None and not fine_tuned_weights.is_full(target.adapter):  # the adapter alone too
        from tempering.export.gguf import write_lora_gguf

        write_lora_gguf(target.adapter, model.config, folder / "adapter.gguf", file_type, target.name)
    return file_type


def _modelfile(tokenizer) -> str:
    """An Ollama Modelfile: the GGUF beside it; Ollama reads the chat template from the file's metadata, and
    stops at the model's end-of-turn tokens."""
    stops = {t for t in (tokenizer.eos_token, "<|im_end|>", "<|end|>") if t and t in tokenizer.get_vocab()}
    lines = ["# ollama create my-model -f Modelfile", "FROM ./model.gguf", "PARAMETER temperature 0.7"]
    lines += [f'PARAMETER stop "{t}"' for t in sorted(stops)]
    return "\n".join(lines) + "\n"


def _plain_config(model, name: str) -> None:
    """Drop what would make a plain ``from_pretrained`` look for a GGUF file or a PEFT adapter."""
    model.hf_quantizer = None
    model.is_quantized = False
    for attr in ("quantization_config", "peft_config", "adapter_config"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    if hasattr(model, "peft_config"):
        del model.peft_config
    model._hf_peft_config_loaded = False
    model.config._name_or_path = name


def _write_marker(folder: Path, target: Target, result: ExportResult) -> None:
    from tempering import __version__
    from tempering.catalog import get_card

    card = get_card(target.base_model)
    meta = {
        "model": result.model,
        "kind": result.kind,
        "format": result.format,
        "task": result.task,
        "base_model": target.base_model,
        "base_hf_repo": card.hf_repo,
        "labels": target.labels,
        "input_format": target.input_format if target.task == "classification" else None,
        "dtype": result.dtype,
        "tempering": __version__,
        "created_at": int(time.time()),
    }
    (folder / MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
