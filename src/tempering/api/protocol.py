"""Wire models: the JSON the REST API speaks, shaped like OpenAI's so the official SDK works unchanged.

Pure pydantic; imports no torch and no database. Conversion from database rows lives in the routers.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from tempering.train.config import Hyperparameters, JobOptions

T = TypeVar("T")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised"] = "supervised"
    supervised: Supervised = Field(default_factory=Supervised)


FileId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class JobCreate(JobOptions):
    """OpenAI's job creation body plus every option of Tempering's job config (``train.config.JobOptions``:
    task, LoRA settings, sequence length, warmup, evaluation, data format …), so the API builds the same
    ``TuneConfig`` the CLI and the portal build. Unknown fields are refused, naming the field."""

    # The bounds are OpenAI's (metadata) or the database's (model); the finer rules (the suffix's characters,
    # the hyperparameters' ranges) are the job config's, checked by parse_config with the field named.
    model: str = Field(min_length=1, max_length=200)
    training_file: FileId
    validation_file: FileId | None = None
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        default=None, max_length=16, description="Up to 16 pairs; keys up to 64 characters, values up to 512.")
    method: Method | None = None
    hyperparameters: Hyperparameters | None = Field(default=None, description="Deprecated by OpenAI in "
                                                    "favour of method.supervised.hyperparameters; still accepted, "
                                                    "but not together with method.")
    integrations: list[dict[str, Any]] | None = Field(default=None, max_length=0, description="OpenAI's "
                                                      "integrations (Weights & Biases); none are supported.")

    @field_validator("hyperparameters")
    @classmethod
    def _one_place_for_hyperparameters(cls, value, info):
        # a field validator (method is declared first), so the error names the field
        if value is not None and info.data.get("method") is not None:
            raise ValueError("send hyperparameters in method.supervised.hyperparameters or at the top level, "
                             "not both")
        return value

    def chosen_hyperparameters(self) -> Hyperparameters:
        if self.method is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()

    def config_fields(self) -> dict:
        """The job config's fields this body sets (files and OpenAI-only fields aside)."""
        fields = self.model_dump(exclude_unset=True, exclude={"training_file", "validation_file", "metadata",
                                                              "method", "hyperparameters", "integrations"})
        return {**fields, "hyperparameters": self.chosen_hyperparameters().model_dump(exclude_unset=True)}


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None = None
    model: str
    fine_tuned_model: str | None = None
    organization_id: str
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    training_file: str
    validation_file: str | None = None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = None
    error: JobError | None = None
    seed: int
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    estimated_finish: int | None = None
    integrations: list = Field(default_factory=list)


class JobEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "warning", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
