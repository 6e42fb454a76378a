"""Wire models: the JSON the REST API speaks, shaped like OpenAI's so the official SDK works unchanged.

Pure pydantic; imports no torch and no database. Conversion from database rows lives in the routers.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

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


class Hyperparameters(BaseModel):
    """OpenAI's hyperparameters; ``batch_size_multiplier`` is Azure's addition."""

    model_config = ConfigDict(extra="forbid")
    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    batch_size_multiplier: float | Literal["auto"] | None = None


class Supervised(BaseModel):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: Supervised = Field(default_factory=Supervised)


FileId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class JobCreate(BaseModel):
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
                                                    "favour of method.supervised.hyperparameters; still accepted.")
    # Tempering's own extensions, ignored by OpenAI's SDK: the task and the data platform's options.
    task: Literal["chat", "classification"] = "chat"
    validation_fraction: float | None = Field(default=None, gt=0.0, lt=0.5)


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
