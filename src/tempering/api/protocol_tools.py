"""Wire models of Tempering's own tool routes: a data file's report, conversion and split, a job's estimate,
the model catalog, and exports. Not OpenAI's; shaped like its objects (``object``, ids, lists).

Pure pydantic, like ``api.protocol``; imports no torch. The report and the estimate are the core's own
pydantic models (``data.report.DataReport``, ``train.estimate.Estimate``, torch-free), with an ``object`` tag:
the JSON of ``tempering data report --json`` and ``tempering tune --estimate --json``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tempering.api.protocol import FileId, FileObject, JobCreate
from tempering.api.protocol_evaluations import DataFormat
from tempering.data.report import DataReport
from tempering.train.estimate import Estimate


class DataOptions(BaseModel):
    """How to read the file: the options of ``tempering data``."""

    format: DataFormat | None = Field(default=None, description="Input format; default: detected from the file.")
    text_column: str | None = Field(default=None, max_length=200, description="Classification: the column "
                                    "holding the text (default: detected, e.g. text, sentence, query).")
    label_column: str | None = Field(default=None, max_length=200, description="Classification: the column "
                                     "holding the label (default: detected, e.g. label, category, intent).")


class ReportRequest(DataOptions):
    validation_file: FileId | None = Field(default=None, description="A validation file of the project: "
                                           "counts per class on both sides, leakage between them.")
    model: str | None = Field(default=None, min_length=1, max_length=200, description="Catalog id whose "
                              "tokenizer, chat template and context length count tokens; none: no token counts.")


class WriteOptions(DataOptions):
    to: Literal["chat", "classification"] = Field(default="chat", description='Write chat JSONL '
                                                  '({"messages"}) or classification JSONL ({"text","label"}).')
    skip_invalid: bool = Field(default=False, description="Leave out lines that fail to convert (they are "
                               "still listed) instead of refusing.")


class ConvertRequest(WriteOptions):
    pass


class SplitRequest(WriteOptions):
    validation_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="Share of examples held out "
                                       "for validation.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="The same seed and data give the same split.")


class DataIssue(BaseModel):
    line: int | None = Field(description="1-based line of the source file; null for the whole file.")
    level: Literal["error", "warning"]
    code: str
    message: str


class DataReportObject(DataReport):
    object: Literal["file.report"] = "file.report"


class ConversionObject(BaseModel):
    object: Literal["file.conversion"] = "file.conversion"
    source_file: str
    format: str = Field(description="The source's format, as given or detected.")
    examples: int = Field(description="Examples in the source.")
    skipped: int = Field(description="Examples left out because they failed to convert (skip_invalid).")
    issues: list[DataIssue] = Field(description="The conversion's problems, at most 100.")
    file: FileObject = Field(description="The new file; its status is the upload checks' verdict.")


class ClassCounts(BaseModel):
    train: int
    validation: int


class SplitObject(BaseModel):
    object: Literal["file.split"] = "file.split"
    source_file: str
    format: str
    skipped: int
    validation_fraction: float
    seed: int
    stratified: bool = Field(description="Whether classes were split one by one.")
    by_label: dict[str, ClassCounts] | None = None
    duplicate_groups: int = Field(description="Groups of examples sharing a prompt, each kept on one side.")
    notes: list[str] = Field(default_factory=list)
    training_file: FileObject
    validation_file: FileObject


class EstimateRequest(JobCreate):
    """The body of ``POST /v1/fine_tuning/jobs``, as it is: what the job would cost, before it is created."""


class EstimateObject(Estimate):
    object: Literal["fine_tuning.estimate"] = "fine_tuning.estimate"


class CatalogModel(BaseModel):
    id: str
    object: Literal["catalog.model"] = "catalog.model"
    name: str
    family: str
    parameters: int
    context_length: int
    license: str
    fine_tunable: bool
    source: str = Field(description="Where its weights come from: embedded-gguf, huggingface or local.")
    hf_repo: str | None = None
    description: str = ""
    weights: Literal["ready", "embedded", "not downloaded"] = Field(
        description="ready: on this server; embedded: shipped in a Python package, prepared on first use; "
                    "not downloaded: see get_weights.")
    get_weights: list[str] = Field(description="Commands that put the weights on the server, in order (an "
                                   "hf download runs on a machine with internet access; copy the folder "
                                   "over before add-path). Empty when ready.")


class ExportCreate(BaseModel):
    model: str = Field(min_length=1, max_length=240, description="A fine-tuned model of the project (ft:…) or "
                       "a checkpoint (ft:…@step-N, ft:…:ckpt-step-N).")
    format: Literal["peft", "merged", "gguf"] = Field(description="peft: the LoRA adapter and tokenizer; "
                                                      "merged: the adapter merged into the base weights; gguf: "
                                                      "model.gguf (merged) and an Ollama Modelfile.")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "q8_0"] = Field(
        default="auto", description="Dtype of merged weights; auto keeps the base's (gguf: f16); q8_0 for gguf "
        "only.")


class ExportObject(BaseModel):
    object: Literal["model.export"] = "model.export"
    model: str
    kind: Literal["fine-tuned", "checkpoint"]
    format: Literal["peft", "merged", "gguf"]
    task: str
    dtype: str | None = None
    files: list[str] = Field(description="The files inside the archive's folder.")
    file: FileObject = Field(description="The zip archive, purpose fine-tune-results: download it with "
                             "GET /v1/files/{id}/content.")
