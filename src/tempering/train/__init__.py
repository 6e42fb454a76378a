"""Training: the job config, the LoRA SFT recipe, batching, loss masking, checkpoints and run artifacts.

Knows nothing about HTTP or databases; a worker (later) runs the same ``tune`` the CLI runs.
"""

from tempering.train.config import Hyperparameters, LoraSettings, TuneConfig
from tempering.train.recipe import TuneResult, tune

__all__ = ["Hyperparameters", "LoraSettings", "TuneConfig", "TuneResult", "tune"]
