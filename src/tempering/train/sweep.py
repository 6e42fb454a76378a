"""A sweep's search space and settings: declarative parameter specs, each naming a path in the job config
(``hyperparameters.learning_rate_multiplier``, ``lora.rank``, …) with a type and a range or choices.

Nothing here knows which fields exist: a spec is checked against ``TuneConfig`` itself (the path must name a
leaf field of it, and every value the spec can produce — both ends of a range, every choice — must make a
valid job config together with the sweep's base config, as ``parse_config`` judges). A new config field is
searchable by adding a spec, no code. Every problem is reported at once, each by its place in the request
(``search_space[1].high``). Imports no torch and no optimiser: ``services.sweeps`` turns specs into Optuna's
distributions.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from tempering.errors import InvalidConfigError

MAX_TRIALS = 50
MAX_CONCURRENT_TRIALS = 8
MAX_CHOICES = 32
# Paths a sweep must not vary: what the sweep is about (the base model, the data), how its trials are named
# (suffix), the task (the objective would change meaning), and the seed (each trial's is the sweep's).
FIXED_PATHS = frozenset({"model", "training_file", "validation_file", "suffix", "seed", "task"})
# What a trial is scored by: the per-epoch validation metric of its job (each epoch's checkpoint carries it);
# the intermediate values that pruning compares are the same metric at each epoch.
OBJECTIVES = {"valid_loss": "minimize", "valid_mean_token_accuracy": "maximize"}

Choice = StrictBool | StrictInt | StrictFloat | StrictStr


class ParameterSpec(BaseModel):
    """One searched field of the job config."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=200, description="Dotted path of a job config field, e.g. "
                      "hyperparameters.learning_rate_multiplier, hyperparameters.n_epochs, lora.rank.")
    type: Literal["float", "int", "categorical"] = Field(description="float or int: a range (low, high); "
                                                         "categorical: a list of choices.")
    low: float | None = Field(default=None, description="Smallest value (float and int).")
    high: float | None = Field(default=None, description="Largest value (float and int).")
    log: bool = Field(default=False, description="Sample on a log scale (float and int; low must be > 0).")
    step: float | None = Field(default=None, gt=0, description="Spacing of the values (int; float without log).")
    choices: list[Choice] | None = Field(default=None, max_length=MAX_CHOICES,
                                         description="The values to choose from (categorical).")

    def values_to_check(self) -> list:
        """The values whose validity stands for the whole spec: both ends of a range, or every choice."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Literal["valid_loss", "valid_mean_token_accuracy"] = Field(
        default="valid_loss", description="The trial's score: its job's validation metric at the epoch its model "
        "is (the kept best checkpoint's, else the last epoch's; for classification, valid_mean_token_accuracy is "
        "the accuracy). valid_loss is minimized, valid_mean_token_accuracy maximized.")

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.metric]


class Pruning(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Stop trials whose validation curve is worse than the "
                          "median of the finished trials' at the same epoch (Optuna's MedianPruner).")
    n_startup_trials: StrictInt = Field(default=2, ge=0, le=MAX_TRIALS,
                                        description="Finished trials needed before any trial is pruned.")
    n_warmup_epochs: StrictInt = Field(default=0, ge=0, le=50,
                                       description="Epochs a trial runs before it can be pruned.")


def default_space() -> list[ParameterSpec]:
    """Learning-rate multiplier (log scale), epochs and LoRA rank: what a person tries first by hand."""
    return [ParameterSpec(path="hyperparameters.learning_rate_multiplier", type="float", low=0.2, high=5.0,
                          log=True),
            ParameterSpec(path="hyperparameters.n_epochs", type="int", low=1, high=5),
            ParameterSpec(path="lora.rank", type="categorical", choices=[8, 16, 32])]


def set_path(config: dict, path: str, value) -> dict:
    """A copy of ``config`` (a job config as a dict) with the dotted ``path`` set to ``value``."""
    result = copy.deepcopy(config)
    node = result
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return result


def apply(config: dict, params: dict) -> dict:
    """The base config with a trial's parameters (path → value) set."""
    for path, value in params.items():
        config = set_path(config, path, value)
    return config


def _leaf_problem(path: str) -> str | None:
    """Why ``path`` does not name a leaf field of the job config (None: it does)."""
    from tempering.train.config import TuneConfig

    if path.split(".")[0] in FIXED_PATHS:
        return f"{path} cannot be searched: a sweep keeps {', '.join(sorted(FIXED_PATHS))} fixed"
    model: type[BaseModel] | None = TuneConfig
    parts = path.split(".")
    for index, part in enumerate(parts):
        fields = model.model_fields if model is not None else {}
        if part not in fields:
            where = ".".join(parts[:index]) or "the job config"
            return f"{path} is not a field of the job config ({part!r} is not in {where})"
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is not None:
        return f"{path} is a group of fields; name one of them ({', '.join(model.model_fields)})"
    return None


def _range_problems(spec: ParameterSpec) -> dict[str, str]:
    if spec.type == "categorical":
        if not spec.choices:
            return {"choices": "a categorical parameter needs at least one choice"}
        extra = [k for k in ("low", "high", "step") if getattr(spec, k) is not None] + (["log"] if spec.log else [])
        return {extra[0]: "only float and int parameters take a range"} if extra else {}
    problems = {}
    if spec.choices is not None:
        problems["choices"] = f"a {spec.type} parameter takes low and high, not choices"
    for end in ("low", "high"):
        value = getattr(spec, end)
        if value is None:
            problems[end] = f"a {spec.type} parameter needs {end}"
        elif not math.isfinite(value) or (spec.type == "int" and value != int(value)):
            problems[end] = f"{end} must be a finite {'integer' if spec.type == 'int' else 'number'}"
    if problems:
        return problems
    if spec.low > spec.high:
        return {"high": f"high ({spec.high:g}) must not be below low ({spec.low:g})"}
    if spec.log and spec.low <= 0:
        return {"low": "a log-scale range needs low > 0"}
    if spec.step is not None and (spec.log or (spec.type == "int" and spec.step != int(spec.step))):
        return {"step": "step goes with an int range (a whole number) or a float range without log"}
    return {}


def check_space(space: list[ParameterSpec], base: dict, *, param: str = "search_space") -> None:
    """Every problem of the search space at once, each named by its place (``search_space[0].high``): paths
    that are no leaf field of the job config or are fixed, paths given twice, malformed ranges, and values
    the job config refuses (checked by building the base config with each one)."""
    from tempering.train.config import parse_config

    problems: dict[str, str] = {}
    if not space:
        problems[param] = "the search space needs at least one parameter"
    seen: set[str] = set()
    for index, spec in enumerate(space):
        where = f"{param}[{index}]"
        if (why := _leaf_problem(spec.path)) is not None:
            problems[f"{where}.path"] = why
            continue
        if spec.path in seen:
            problems[f"{where}.path"] = f"{spec.path} is searched twice"
        seen.add(spec.path)
        if ranges := _range_problems(spec):
            problems.update({f"{where}.{key}": text for key, text in ranges.items()})
            continue
        for name, value in zip(_value_names(spec), spec.values_to_check(), strict=True):
            try:
                parse_config(set_path(base, spec.path, value))
            except InvalidConfigError as exc:
                problems[f"{where}.{name}"] = f"{value!r} is not a valid {spec.path}: " + \
                    exc.message.removeprefix("invalid job config: ")
    _raise(problems)


def _value_names(spec: ParameterSpec) -> list[str]:
    return [f"choices[{i}]" for i in range(len(spec.choices or []))] if spec.type == "categorical" \
        else ["low", "high"]


def check_initial_trials(trials: list[dict], space: list[ParameterSpec], base: dict, n_trials: int) -> None:
    """Trials the caller fixes (run first, in order): at most ``n_trials``, each naming only searched paths,
    each making a valid job config."""
    problems: dict[str, str] = {}
    if len(trials) > n_trials:
        problems["initial_trials"] = f"{len(trials)} initial trials, more than n_trials ({n_trials})"
    paths = {spec.path for spec in space}
    from tempering.train.config import parse_config

    specs = {spec.path: spec for spec in space}
    for index, params in enumerate(trials):
        unknown = sorted(set(params) - paths)
        if unknown:
            problems[f"initial_trials[{index}]"] = (f"{', '.join(unknown)} is not in the search space "
                                                    f"({', '.join(sorted(paths))})")
            continue
        outside = [f"{path}={value!r} is outside its range or choices" for path, value in params.items()
                   if not _within(specs[path], value)]
        if outside:
            problems[f"initial_trials[{index}]"] = "; ".join(outside)
            continue
        try:
            parse_config(apply(base, params))
        except InvalidConfigError as exc:
            problems[f"initial_trials[{index}]"] = exc.message
    _raise(problems)


def _within(spec: ParameterSpec, value) -> bool:
    """Whether a fixed value is one the spec could produce (the optimiser only models those)."""
    if spec.type == "categorical":
        return any(type(value) is type(choice) and value == choice for choice in spec.choices or [])
    if isinstance(value, bool) or not isinstance(value, int | float) or (spec.type == "int" and
                                                                         not isinstance(value, int)):
        return False
    return spec.low <= value <= spec.high


def _raise(problems: dict[str, str]) -> None:
    if problems:
        text = "; ".join(f"{field}: {message}" for field, message in problems.items())
        raise InvalidConfigError("invalid sweep: " + text, param=next(iter(problems)))
