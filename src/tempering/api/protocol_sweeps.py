"""Wire models of ``/v1/fine_tuning/sweeps``, Tempering's own resource (OpenAI has no counterpart), shaped
like its fine-tuning jobs: a sweep runs ``n_trials`` child fine-tuning jobs over a search space and keeps the
best trial's model as its ``fine_tuned_model``.

Pure pydantic, like ``api.protocol``; imports no torch. The search space's specs are ``train.sweep``'s (no
torch either), so the help text lives once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from tempering.api.protocol import JobCreate, JobError
from tempering.train.sweep import MAX_CONCURRENT_TRIALS, MAX_TRIALS, Objective, ParameterSpec, Pruning

SweepStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TrialState = Literal["running", "complete", "pruned", "failed", "cancelled"]
SWEEP_ONLY = {"n_trials", "max_concurrent_trials", "search_space", "objective", "pruning", "initial_trials"}


class SweepCreate(JobCreate):
    """A fine-tuning job's body (the base config every trial starts from) plus the sweep's own fields."""

    n_trials: int = Field(default=6, ge=1, le=MAX_TRIALS, description=f"Trials to run (1-{MAX_TRIALS}).")
    max_concurrent_trials: int = Field(
        default=1, ge=1, le=MAX_CONCURRENT_TRIALS, description="Trials queued or running at once; each is a job "
        "and counts against the project's concurrent_jobs quota. 1 lets every trial learn from all before it.")
    search_space: list[ParameterSpec] | None = Field(
        default=None, max_length=16, description="Parameters to search, each a job config path with a range or "
        "choices; default: hyperparameters.learning_rate_multiplier (0.2-5, log), hyperparameters.n_epochs "
        "(1-5), lora.rank (8, 16, 32).")
    objective: Objective = Field(default_factory=Objective)
    pruning: Pruning = Field(default_factory=Pruning)
    initial_trials: list[dict[str, Any]] | None = Field(
        default=None, max_length=MAX_TRIALS, description="Parameter sets (path → value) to run first, in order, "
        "before the optimiser chooses; paths not given are chosen by it.")

    def config_fields(self) -> dict:
        fields = super().config_fields()
        return {k: v for k, v in fields.items() if k not in SWEEP_ONLY}


class SweepTrialObject(BaseModel):
    number: int
    state: TrialState
    fine_tuning_job_id: str
    parameters: dict[str, Any]
    objective: float | None = None
    intermediate_values: dict[str, float | None] = Field(
        default_factory=dict, description="The objective's metric after each epoch (epoch → value; null where it "
        "was not finite: the loss diverged).")
    job_status: str | None = None
    fine_tuned_model: str | None = None
    created_at: int
    finished_at: int | None = None


class SweepObject(BaseModel):
    id: str
    object: Literal["fine_tuning.sweep"] = "fine_tuning.sweep"
    created_at: int
    finished_at: int | None = None
    model: str
    organization_id: str
    status: SweepStatus
    training_file: str
    validation_file: str | None = None
    seed: int
    suffix: str | None = None
    n_trials: int
    max_concurrent_trials: int
    search_space: list[ParameterSpec]
    objective: Objective
    pruning: Pruning
    trials: list[SweepTrialObject] = Field(default_factory=list)
    best_trial: int | None = None
    fine_tuned_model: str | None = None
    error: JobError | None = None
    metadata: dict[str, str] | None = None
