"""Wire models of ``/v1/evaluations``, Tempering's own resource (OpenAI has no counterpart): evaluate a model,
and optionally a baseline, on an uploaded file, on the job workers.

Pure pydantic, like ``api.protocol``; imports no torch. The report is the ``EvaluationReport`` of
``tempering eval --json`` (docs/evaluation.md), passed through as JSON: importing its class would import
the evaluation package, and torch with it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tempering.api.protocol import FileId, JobError

# The data platform's formats (tempering.data.formats.FORMATS; a test keeps the two the same)
DataFormat = Literal["chat", "prompt-completion", "text", "instruction", "classification"]
EvaluationStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=240, description="What to evaluate: a catalog id, a fine-tuned "
                       "model of this project, or one of its checkpoints (`<fine-tuned id>:ckpt-step-N` or "
                       "`<fine-tuned id>@step-N`).")
    data_file: FileId = Field(description="An uploaded file (purpose `fine-tune` or `evals`) with reference "
                              "answers, in any format the data platform reads.")
    compare_model: str | None = Field(
        default="base", min_length=1, max_length=240, description="The baseline: a model named as for `model`, "
        "`base` (the base model of a fine-tuned model or checkpoint; nothing for a base model), or null (or "
        "`none`) for no baseline.")
    train_file: FileId | None = Field(default=None, description="The model's training data (an uploaded file, "
                                      "any format): with `answers` auto, its answers tell whether answers are "
                                      "labels.")
    max_examples: int = Field(default=100, ge=1, le=100_000, description="Most examples scored (a seeded "
                              "sample), for loss and generation alike.")
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Most tokens per generated answer.")
    answers: Literal["auto", "labels", "text"] = Field(
        default="auto", description="auto: answers that repeat from a small set are labels; labels; text.")
    data_format: DataFormat | None = Field(default=None, description="The data file's format; detected when "
                                           "absent.")
    text_column: str | None = Field(default=None, max_length=200, description="Text column of classification "
                                    "data.")
    label_column: str | None = Field(default=None, max_length=200, description="Label column of classification "
                                     "data.")

    def options(self) -> dict[str, Any]:
        """``evaluate_file``'s arguments besides the model, the data and the baseline."""
        return self.model_dump(include={"train_file", "max_examples", "max_new_tokens", "answers", "data_format",
                                        "text_column", "label_column"})


class EvaluationObject(BaseModel):
    id: str
    object: Literal["evaluation"] = "evaluation"
    status: EvaluationStatus
    model: str
    compare_model: str | None = Field(description="The baseline evaluated against (`base` resolved to the "
                                      "model's base), or null.")
    data_file: str
    options: dict[str, Any] = Field(description="train_file, max_examples, max_new_tokens, answers, "
                                    "data_format, text_column, label_column as requested.")
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    report: dict[str, Any] | None = Field(default=None, description="The evaluation report once succeeded: "
                                          "per model loss, generation and label metrics, cost, samples and "
                                          "the verdict (the JSON of `tempering eval --json`).")
    error: JobError | None = None
