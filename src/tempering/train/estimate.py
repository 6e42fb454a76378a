"""Estimate before submit: trained tokens, wall time and cost of a fine-tuning job, and the calibration
that the time estimate rests on.

Trained tokens are tokens per epoch (through the model's template, as training counts them) × epochs (the
job's "auto" rules from ``train.config``). Time comes from this machine's measured throughput for the
model: ``calibrate`` runs one short, real training job on synthetic chat data and stores tokens per second
and the fixed overhead per model and device in ``TEMPERING_HOME/calibration.json``. Cost comes from the
price table in settings. Knows nothing about HTTP or printing; torch is only imported to name the device.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from tempering.catalog import DEFAULT_MODEL_ID, get_card
from tempering.settings import get_settings
from tempering.store import objects

# Evaluation is a forward pass only: about a third of a training step's work per token.
EVAL_COST = 1 / 3
# 16 examples: under the recipe's 20-example threshold for holding some out, so no evaluation is timed.
CALIBRATION_EXAMPLES, CALIBRATION_EPOCHS, CALIBRATION_BATCH = 16, 3, 4
_WORDS = (  # noqa: SIM905 - a word list reads better as text
    "river stone market lantern orbit harvest signal copper meadow engine garden window planet "
    "thunder ladder violet compass bakery harbor pencil glacier rocket tunnel velvet anchor falcon"
).split()


class Calibration(BaseModel):
    model: str = Field(description="Catalog id of the base model that was timed.")
    device: str = Field(description="Device key: 'cpu', or 'cuda:<GPU name>'.")
    dtype: str
    tokens_per_second: float = Field(
        description="Trained tokens per second of training (steps, checkpoints)."
    )
    overhead_seconds: float = Field(description="The rest of a run: loading the model, saving the adapter.")
    trained_tokens: int
    fit_seconds: float
    total_seconds: float
    n_examples: int
    batch_size: int
    n_epochs: int
    measured_at: int


class Estimate(BaseModel):
    model: str
    base_model: str
    device: str
    n_train_examples: int
    n_validation_examples: int
    tokens_per_epoch: int
    n_epochs: int
    trained_tokens: int = Field(description="Tokens per epoch × epochs.")
    validation_tokens: int = Field(description="Tokens of one pass over the validation examples.")
    tokens_per_second: float | None = Field(description="Measured by `tempering calibrate`; null if never.")
    seconds: float | None = Field(description="Estimated wall time; null without a calibration.")
    price_per_1k_tokens: float
    cost: float = Field(description="trained_tokens / 1000 × price_per_1k_tokens.")
    currency: str = "USD"
    notes: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- calibration store


def device_key(placement) -> str:
    """'cpu' or 'cuda:<name>': throughput is per kind of device, not per device index."""
    if placement.device.type == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(placement.device)}"
    return placement.device.type


def read_calibrations() -> dict[str, Calibration]:
    """Stored calibrations by ``"<model>@<device>"``; an unreadable file counts as none."""
    path = get_settings().calibration_file
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {key: Calibration.model_validate(value) for key, value in raw.get("entries", {}).items()}
    except (OSError, ValueError):
        return {}


def find_calibration(model: str, device: str) -> Calibration | None:
    return read_calibrations().get(f"{model}@{device}")


def save_calibration(calibration: Calibration) -> Path:
    """Add or replace one entry, atomically (temp file, then rename)."""
    path = get_settings().calibration_file
    entries = {k: v.model_dump() for k, v in read_calibrations().items()}
    entries[f"{calibration.model}@{calibration.device}"] = calibration.model_dump()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"entries": entries}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def synthetic_examples(n: int, seed: int = 0) -> list[list[dict]]:
    """Deterministic chat examples of varied length (about 40 to 200 tokens) for timing."""
    import random

    rng = random.Random(seed)  # noqa: S311 - seeded synthetic text, not a secret
    examples = []
    for i in range(n):
        question = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 40)))
        answer = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(10, 120)))
        examples.append(
            [
                {"role": "system", "content": "You repeat words."},
                {"role": "user", "content": f"Example {i}: {question}"},
                {"role": "assistant", "content": answer},
            ]
        )
    return examples


def calibrate(
    model: str = DEFAULT_MODEL_ID, *, device: str = "auto", on_event: Callable[[dict], None] | None = None
) -> Calibration:
    """Time a short real fine-tuning job of ``model`` on synthetic chat data; store and return the result.

    The job is the normal recipe (so its speed is a real job's speed) on ``CALIBRATION_EXAMPLES`` examples,
    ``CALIBRATION_EPOCHS`` epochs, with no validation; its run folder is deleted afterwards.
    """
    from tempering.hardware import select_placement
    from tempering.train.config import parse_config
    from tempering.train.recipe import tune

    card = get_card(model)
    placement = select_placement(device)
    marks: dict[str, float] = {}

    def timer(event: dict) -> None:
        marks.setdefault(event["type"], time.perf_counter())
        if event["type"] == "epoch":
            marks["last_epoch"] = time.perf_counter()
        if on_event is not None:
            on_event(event)

    with tempfile.TemporaryDirectory(prefix="tempering-calibrate-") as folder:
        data = Path(folder) / "synthetic.jsonl"
        data.write_text(
            "".join(json.dumps({"messages": m}) + "\n" for m in synthetic_examples(CALIBRATION_EXAMPLES)),
            encoding="utf-8",
        )
        config = parse_config(
            {
                "model": card.id,
                "training_file": data,
                "seed": 0,
                "device": device,
                "hyperparameters": {"n_epochs": CALIBRATION_EPOCHS, "batch_size": CALIBRATION_BATCH},
            }
        )
        result = tune(config, on_event=timer)
    run_dir = Path(result.run_dir)
    if run_dir.parent == get_settings().runs_dir:  # the timing job is not a model anyone asked for
        shutil.rmtree(run_dir, ignore_errors=True)
        objects.remove(run_dir, folder=True)  # and from a shared artifact store
    fit_seconds = marks["last_epoch"] - marks["started"]
    calibration = Calibration(
        model=card.id,
        device=device_key(placement),
        dtype=placement.dtype_name,
        tokens_per_second=round(result.trained_tokens / fit_seconds, 2),
        overhead_seconds=round(max(0.0, result.seconds - fit_seconds), 2),
        trained_tokens=result.trained_tokens,
        fit_seconds=round(fit_seconds, 3),
        total_seconds=result.seconds,
        n_examples=result.n_train_examples,
        batch_size=result.hyperparameters.batch_size,
        n_epochs=result.hyperparameters.n_epochs,
        measured_at=int(time.time()),
    )
    save_calibration(calibration)
    return calibration


# ---------------------------------------------------------------- the estimate


def price_per_1k(model: str, hub_settings: dict | None = None) -> float:
    """The training price of a base model: a hub's price table over the server's (``store.usage``, the table
    the usage ledger charges by)."""
    from tempering.store.usage import price_table

    return price_table(hub_settings, model, get_settings()).training_per_1k_tokens


def estimate_seconds(
    trained_tokens: int, validation_tokens: int, n_epochs: int, calibration: Calibration
) -> float:
    """Overhead + (trained tokens + the evaluation passes' tokens at a third of the cost) / throughput.

    A job evaluates its validation set before training, after every epoch, and once at the end.
    """
    eval_tokens = validation_tokens * (n_epochs + 2) if validation_tokens else 0
    return (
        calibration.overhead_seconds
        + (trained_tokens + EVAL_COST * eval_tokens) / calibration.tokens_per_second
    )


def estimate(
    train: Sequence[list[dict]], *, tokenizer, config, validation: Sequence[list[dict]] = (), seed: int = 0,
    hub_settings: dict | None = None, n_classes: int | None = None,
) -> Estimate:
    """Tokens, time and cost of fine-tuning ``config`` (a ``TuneConfig``) on these examples.

    ``train`` and ``validation`` are the chat message lists the job will use, after any split (with no
    validation file, split first: the "auto" epochs depend on the training count). ``tokenizer`` is the
    base model's. Time is None until ``calibrate`` has measured this model on this device. Cost: the price
    table of ``hub_settings`` (the project's hub) over the server's defaults.
    """
    from tempering.data.encode import encode_chat
    from tempering.hardware import select_placement
    from tempering.train.artifacts import base_model_of
    from tempering.train.config import resolve_hyperparameters

    base = base_model_of(config.model)
    card = get_card(base)
    hp = resolve_hyperparameters(config, len(train), card.family, seed, n_classes)
    tokens_per_epoch = sum(len(encode_chat(tokenizer, m)) for m in train)
    validation_tokens = sum(len(encode_chat(tokenizer, m)) for m in validation)
    trained = tokens_per_epoch * hp.n_epochs
    device = device_key(select_placement(config.device))
    calibration = find_calibration(card.id, device)
    price = price_per_1k(card.id, hub_settings)
    notes = []
    if calibration is None:
        notes.append(f"no time estimate: run `tempering calibrate --model {card.id}` once on this machine")
    seconds = (
        None
        if calibration is None
        else round(estimate_seconds(trained, validation_tokens, hp.n_epochs, calibration), 1)
    )
    return Estimate(
        model=config.model,
        base_model=card.id,
        device=device,
        n_train_examples=len(train),
        n_validation_examples=len(validation),
        tokens_per_epoch=tokens_per_epoch,
        n_epochs=hp.n_epochs,
        trained_tokens=trained,
        validation_tokens=validation_tokens,
        tokens_per_second=None if calibration is None else calibration.tokens_per_second,
        seconds=seconds,
        price_per_1k_tokens=price,
        cost=round(trained / 1000 * price, 4),
        notes=notes,
    )


def estimate_job(config, hub_settings: dict | None = None) -> Estimate:
    """Tokens, time and cost of ``config`` (a ``TuneConfig``) before it runs: the same validation, loading
    and split as the job itself (``train.jobdata``), priced by the hub's table (``hub_settings``)."""
    from tempering.catalog import load_tokenizer
    from tempering.train.artifacts import base_model_of
    from tempering.train.jobdata import class_count, load_job_data

    seed = config.seed if config.seed is not None else 0
    card = get_card(base_model_of(config.model))
    tokenizer = load_tokenizer(card)
    data = load_job_data(config, tokenizer, card.context_length, seed)
    return estimate(data.train, tokenizer=tokenizer, config=config, validation=data.valid, seed=seed,
                    hub_settings=hub_settings, n_classes=class_count(data.train, data.train_labels, config))
