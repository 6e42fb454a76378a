"""Training: the job config, the LoRA SFT recipe, batching, loss masking, checkpoints and run artifacts.

Knows nothing about HTTP or databases; a worker runs the same ``tune`` the CLI runs. Importing the package
loads nothing heavy: ``tune`` and ``TuneResult`` (which need torch) load on first use, so the torch-free
modules (``train.config``, ``train.artifacts``) can be imported by the edges.
"""

from tempering.train.config import Hyperparameters, LoraSettings, TuneConfig

_LAZY = {"TuneResult": "tempering.train.recipe", "tune": "tempering.train.recipe"}

__all__ = ["Hyperparameters", "LoraSettings", "TuneConfig", "TuneResult", "tune"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
