"""Checkpoints: everything needed to continue a run exactly, written so a crash never leaves a fake one.

A checkpoint folder ``checkpoints/step-<N>/`` holds the PEFT adapter, ``training_state.pt`` (optimizer,
scheduler, RNG states, and the data position: the epoch to train and how many of its batches are done) and ``metrics.json``; the ``COMPLETE`` marker is written
last inside a temp folder that is then renamed into place. ``latest_checkpoint`` ignores any folder
without the marker.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from tempering.train.artifacts import atomic_dir

COMPLETE = "COMPLETE"
STATE_FILE = "training_state.pt"


def save_checkpoint(run_folder: Path, *, model, optimizer, scheduler, step: int, epoch: int,
                    batches_done: int, metrics: dict, extra: dict | None = None) -> Path:
    target = run_folder / "checkpoints" / f"step-{step:06d}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python_rng": random.getstate(),
                "step": step,
                "epoch": epoch,
                "batches_done": batches_done,
                **(extra or {}),
            },
            tmp / STATE_FILE,
        )
        (tmp / "metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=2))
        (tmp / COMPLETE).write_text("ok\n")
    return target


def list_checkpoints(run_folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = run_folder / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / COMPLETE).is_file())


def latest_checkpoint(run_folder: Path) -> Path | None:
    complete = list_checkpoints(run_folder)
    return complete[-1] if complete else None
