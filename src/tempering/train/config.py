"""The fine-tuning job config: one pydantic object that the CLI (and later the API and portal) builds.

Field descriptions are the single source of help text. "auto" values are resolved from the data size by
``resolve_hyperparameters`` with rules documented there (OpenAI's "auto" semantics). Imports no torch.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Len
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from tempering.catalog.registry import DEFAULT_MODEL_ID

Auto = Literal["auto"]

# Base learning rate per model family; the job's learning_rate_multiplier scales it.
BASE_LEARNING_RATE = {"smollm2": 1e-3, "phi3": 2e-4}
DEFAULT_BASE_LEARNING_RATE = 2e-4
# Full fine-tuning moves every weight, not a small adapter: the usual rates for that are 20x lower.
FULL_LEARNING_RATE_SCALE = 0.05
# Early stopping's "auto": this patience (epochs without improvement) for classification, off for chat.
AUTO_PATIENCE = {"classification": 2, "chat": 0}

# OpenAI's published rule for "auto" epochs: aim for ~3 epochs, but see at least 100 and at most
# 25,000 examples in total, with 1 to 25 epochs.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MAX_AUTO_EPOCHS = 3, 100, 25_000, 25
# Few examples per class (a classification job, or a chat job whose answers are labels): the general rule's 3
# epochs show each class only 3 x its examples (BANKING77 at 10 per intent: 27 views). "auto" then trains until
# each class has been seen
# CLASS_VIEWS times (examples per class x epochs), up to CLASSIFICATION_MAX_EPOCHS, in batches of at most
# CLASSIFICATION_MAX_BATCH; early stopping (on by default for classification) ends it once validation macro-F1
# stops improving. Sets with more examples per class keep the general rule (docs/evaluation.md: a rule by step
# count instead, which also lengthened a 45-per-class set, lost 8 points there). Chat answers with labels: the
# same rule took BANKING77's constrained answers from 0.578 to 0.799 accuracy (3 -> 9 epochs).
CLASS_VIEWS, CLASSIFICATION_MAX_BATCH, CLASSIFICATION_MAX_EPOCHS = 90, 16, 10

# Options added after jobs were first stored, each with the value that keeps a job stored before it as it was
# created (one queued, or interrupted and resumed, across an upgrade: a resumed job's loss must not change mid-run);
# a new job gets the field's default. (Options whose default behaves as before need no entry.)
BEFORE_OPTION = {"class_weights": "none", "early_stopping": 0, "head_init": "random"}


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: StrictInt | Auto = Field(
        default="auto", description="Passes over the training data (1-50). auto: 3, or more for tiny "
        "data sets so at least 100 examples are seen, fewer for huge ones; for classification (and chat whose "
        "answers are labels), enough for each label to be seen 90 times where that is more, at most 10.")
    batch_size: StrictInt | Auto = Field(
        default="auto", description="Examples per optimizer step (1-256). auto: about 1/20 of the "
        "training examples, rounded down to a power of two, between 1 and 32.")
    batch_size_multiplier: float | Auto = Field(
        default="auto", description="Azure-style scale on the batch size (0 < x <= 64): the effective batch "
        "is batch_size (or its auto value) times this, rounded, at least 1; auto: 1.")
    learning_rate_multiplier: float | Auto = Field(
        default="auto", description="Scales the model family's base learning rate (0 < x <= 10); auto: 1.")

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, v):
        if v != "auto" and not 1 <= v <= 50:
            raise ValueError("n_epochs must be between 1 and 50, or 'auto'")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v):
        if v != "auto" and not 1 <= v <= 256:
            raise ValueError("batch_size must be between 1 and 256, or 'auto'")
        return v

    @field_validator("batch_size_multiplier")
    @classmethod
    def _batch_multiplier(cls, v):
        if v != "auto" and not 0 < v <= 64:
            raise ValueError("batch_size_multiplier must be > 0 and <= 64, or 'auto'")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _lr(cls, v):
        if v != "auto" and not 0 < v <= 10:
            raise ValueError("learning_rate_multiplier must be > 0 and <= 10, or 'auto'")
        return v


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: StrictInt = Field(default=16, ge=1, le=256, description="LoRA rank r.")
    alpha: StrictInt = Field(default=32, ge=1, le=1024, description="LoRA alpha; the update is scaled by alpha/r.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=100)]],
                              Len(1, 64)] | Literal["all-linear"] = Field(
        default="all-linear", description="Linear layers to adapt: module names, or all-linear.")


class JobOptions(BaseModel):
    """Tempering's own options of a job, beyond OpenAI's (model, files, suffix, seed, hyperparameters): what
    the job config adds, accepted by the API's job creation as they are, and by the CLI and the portal."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["chat", "classification"] = Field(
        default="chat", description="chat: LoRA supervised fine-tuning on assistant turns. classification: a "
        "classification head on the model (trained fully, the body with LoRA) predicting a label from a text.")
    validation_fraction: float = Field(default=0.1, gt=0.0, lt=0.5,
                                       description="Share of the training file held out when no validation file.")
    data_format: str | None = Field(default=None, max_length=40,
                                    description="Format of the data files; detected when absent.")
    text_column: str | None = Field(default=None, max_length=200,
                                    description="Text column of classification CSV/JSONL data.")
    label_column: str | None = Field(default=None, max_length=200,
                                     description="Label column of classification CSV/JSONL data.")
    adapter: Literal["lora", "dora", "full"] = Field(
        default="lora", description="What training changes. lora: low-rank adapters on the base's linear layers. "
        "dora: LoRA with weight decomposition (PEFT's use_dora; served through PEFT's slower path). full: every "
        "weight of the model (its own weights, not an adapter; the base learning rate is 20x lower, and "
        "checkpoints hold the whole model and its optimizer state).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (adapter lora or dora).")
    optimizer: Literal["adamw", "sgd", "adafactor"] = Field(
        default="adamw", description="adamw (default), sgd (with momentum 0.9, Nesterov), or adafactor "
        "(transformers' Adafactor at the job's learning rate: factored second moments, less optimizer memory).")
    label_smoothing: float = Field(
        default=0.0, ge=0.0, le=0.5, description="Label smoothing of the training loss (0-0.5): the target puts "
        "this share of its probability evenly on every token (chat) or label (classification). Validation loss "
        "is always plain cross-entropy.")
    class_weights: Literal["auto", "balanced", "none"] = Field(
        default="auto", description="How a classification job weighs its labels in the training loss. balanced: "
        "an example of a label with c of the n training examples weighs n / (labels x c), so every label counts "
        "as much in total (scikit-learn's \"balanced\"). none: every example the same. auto (default): balanced "
        "when the most frequent label has at least 3 times the training examples of the rarest, else none. "
        "Validation loss is never weighted. Classification only.")
    head_init: Literal["auto", "labels", "random"] = Field(
        default="auto", description="How a classification head starts. labels: each label's row is the mean of the "
        "base model's embeddings of the label name's tokens (\"card_arrival\" read as \"card arrival\"), centred "
        "over the labels and scaled to the random init's norm. random: the model's own random init. auto (default): "
        "labels when every label is a word or words (letters, no digits), else random. Classification only.")
    selection_metric: Literal["auto", "loss", "accuracy", "macro_f1"] = Field(
        default="auto", description="The validation metric that picks the kept checkpoint among the epochs' and "
        "drives early stopping. auto: macro_f1 for classification, loss for chat. accuracy: example accuracy "
        "(classification) or mean token accuracy (chat); macro_f1 is for classification only.")
    early_stopping: StrictInt | Literal["auto"] = Field(
        default="auto", description="Patience: stop once this many epochs in a row have not improved the "
        "selection metric (0: never stop early). auto: 2 for classification, 0 (off) for chat.")
    max_seq_length: int | None = Field(
        default=None, ge=16, le=1_048_576, description="Longest training sequence in tokens; default: the "
        "model's context.")
    warmup_ratio: float = Field(default=0.1, ge=0.0, le=0.5, description="Share of steps spent warming up.")
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0,
                                description="Weight decay (decoupled for adamw and adafactor, L2 for sgd).")
    checkpoint_every_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Also write a checkpoint every N steps (one is always "
        "written per epoch).")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where to train.")
    evaluate: bool = Field(
        default=True, description="After training, evaluate the base and the fine-tuned model on the validation "
        "set and store evaluation.json with the run: loss metrics, greedy answers' metrics, a verdict.")
    eval_max_examples: int = Field(
        default=50, ge=0, le=100_000, description="Most validation examples the evaluation answers by "
        "generation (greedy, at most 64 new tokens each, base and fine-tuned); 0: loss metrics only.")
    eval_answers: Literal["auto", "labels", "text"] = Field(
        default="auto", description="How the evaluation scores chat answers: labels (accuracy, macro-F1) or text "
        "(ROUGE-L). auto: labels when the training answers are a small closed set of short answers that the "
        "validation answers fall in.")

    @field_validator("lora")
    @classmethod
    def _lora_needs_adapter(cls, v, info: ValidationInfo):
        if info.data.get("adapter") == "full" and v != LoraSettings():
            raise ValueError("LoRA settings apply to adapter lora or dora, and adapter full trains every weight and "
                             "takes none (remove lora, or choose adapter lora or dora)")
        return v

    @field_validator("selection_metric")
    @classmethod
    def _metric_fits_task(cls, v, info: ValidationInfo):
        if v == "macro_f1" and info.data.get("task", "chat") == "chat":
            raise ValueError("macro_f1 is a classification metric, and a chat job selects by loss or accuracy "
                             "(or auto: loss)")
        return v

    @field_validator("head_init", "class_weights")
    @classmethod
    def _needs_classification(cls, v, info: ValidationInfo):
        # auto and the neutral values (random, none) mean "nothing to set up" for a chat job (configs stored
        # before head_init auto became the default name random); only an explicit classification choice is a
        # contradiction
        value, what = {"head_init": ("labels", "sets up a classification head"),
                       "class_weights": ("balanced", "weighs the labels of a classification job")}[info.field_name]
        if v == value and info.data.get("task", "chat") == "chat":
            raise ValueError(f"{info.field_name} {what}, and a chat job has none (use task classification, or "
                             f"leave {info.field_name} out)")
        return v

    @field_validator("early_stopping")
    @classmethod
    def _patience(cls, v):
        if v != "auto" and not 0 <= v <= 50:
            raise ValueError("early_stopping must be a patience between 0 (off) and 50 epochs, or 'auto'")
        return v

    def resolved_selection_metric(self) -> str:
        if self.selection_metric != "auto":
            return self.selection_metric
        return "macro_f1" if self.task == "classification" else "loss"

    def resolved_patience(self) -> int:
        return AUTO_PATIENCE[self.task] if self.early_stopping == "auto" else self.early_stopping


SUFFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$"


class TuneConfig(JobOptions):
    """The one job config: what the CLI, the API and the portal build, what a run stores in ``run.json``."""

    model: str = Field(default=DEFAULT_MODEL_ID, description="Catalog id of the base model, or a fine-tuned "
                       "model id to continue training.")
    training_file: Path = Field(description="Training data: chat JSONL or any format `tempering data convert` reads.")
    validation_file: Path | None = Field(
        default=None, description="Validation data; when absent, a seeded split of the training file is held out "
        "(stratified by label, duplicates kept on one side) if it has at least 20 examples.")
    suffix: str | None = Field(
        default=None, pattern=SUFFIX_PATTERN,
        description="Up to 40 letters, digits, '-' or '_', put in the fine-tuned model's id.")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1,
                             description="Random seed; a random one is chosen and recorded when absent.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class ResolvedHyperparameters(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    seed: int


def _auto_epochs(n_examples: int) -> int:
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(n_examples, 1)))
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def _class_epochs(n_examples: int, n_classes: int | None) -> int | None:
    """Epochs for each class to be seen ``CLASS_VIEWS`` times, when that is more than the general rule gives
    (jobs that learn classes: a classification job, or a chat job whose answers are labels; None otherwise)."""
    if not n_classes or not n_examples:
        return None
    needed = min(CLASSIFICATION_MAX_EPOCHS, math.ceil(CLASS_VIEWS * n_classes / n_examples))
    return needed if needed > _auto_epochs(n_examples) else None


def check_continuation(model_id: str, parent_task: str, task: str, base_model: str) -> None:
    """Refuse continuing a fine-tuned model as another task: a chat model's adapter and a classifier's head over
    its labels are trained for their own task (``InvalidConfigError`` on ``task``)."""
    from tempering.errors import InvalidConfigError

    if parent_task != task:
        raise InvalidConfigError(f"{model_id} is a {parent_task} model, so a job continuing it is a {parent_task} "
                                 f"job (task {parent_task}, not {task}); for a {task} job start from its base "
                                 f"model, {base_model}", param="task")


def resolve_hyperparameters(config: TuneConfig, n_examples: int, family: str, seed: int,
                            n_classes: int | None = None) -> ResolvedHyperparameters:
    """The job's hyperparameters with every "auto" resolved; ``n_classes``: the classes the job learns
    (``jobdata.class_count``: a classification job's labels, a chat job's label answers), None for free text."""
    hp = config.hyperparameters
    class_epochs = _class_epochs(n_examples, n_classes)
    if hp.batch_size == "auto":
        batch_size = min(32 if class_epochs is None else CLASSIFICATION_MAX_BATCH, 2 ** int(math.log2(max(1, n_examples // 20))))
    else:
        batch_size = hp.batch_size
    if hp.batch_size_multiplier != "auto":
        batch_size = max(1, round(batch_size * hp.batch_size_multiplier))
    batch_size = min(batch_size, max(1, n_examples))
    if hp.n_epochs == "auto":
        n_epochs = class_epochs or _auto_epochs(n_examples)
    else:
        n_epochs = hp.n_epochs
    multiplier = 1.0 if hp.learning_rate_multiplier == "auto" else hp.learning_rate_multiplier
    base = BASE_LEARNING_RATE.get(family, DEFAULT_BASE_LEARNING_RATE)
    if config.adapter == "full":
        base *= FULL_LEARNING_RATE_SCALE
    return ResolvedHyperparameters(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate_multiplier=multiplier,
        learning_rate=base * multiplier,
        seed=seed,
    )


# Pydantic names the branch of a union it tried ("int", "literal['auto']", "function-after[...]") in an error's
# location; a person wants the field.
_BRANCH = re.compile(r"^(int|float|str|bool|list|dict|none|strict-int|literal\[.*\]|function-\w+\[.*\]|"
                     r"constrained-\w+|is-instance\[.*\]|lax-or-strict\[.*\])$")


def _field_of(loc) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and _BRANCH.match(p))) or "config"


def parse_config(data: dict) -> TuneConfig:
    """Build a ``TuneConfig``; every invalid field is reported at once, each by its dotted name."""
    from pydantic import ValidationError

    from tempering.errors import InvalidConfigError

    try:
        return TuneConfig.model_validate(data)
    except ValidationError as exc:
        problems: dict[str, list[str]] = {}
        for e in exc.errors():
            problems.setdefault(_field_of(e["loc"]), []).append(e["msg"])
        text = "; ".join(f"{field}: {' or '.join(dict.fromkeys(msgs))}" for field, msgs in problems.items())
        first = next(iter(problems))
        raise InvalidConfigError("invalid job config: " + text, param=None if first == "config" else first) from exc
