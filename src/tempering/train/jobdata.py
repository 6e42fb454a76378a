"""A job's data, read the one way every caller reads it: validate each file (every problem at once), load
its examples in any supported format, and hold out a seeded, stratified validation split when no validation
file is given. The recipe, the estimate and the job runner's up-front check all call this; none repeats it.
Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tempering.data.findings.keys import final_answer, training_label_set
from tempering.data.formats import load_examples, validate_any
from tempering.data.split import split_examples
from tempering.data.validate import MIN_EXAMPLES, invalid_data
from tempering.train.config import TuneConfig

# Below this many training examples nothing is held out: the split would leave too little to learn from.
MIN_EXAMPLES_FOR_HOLDOUT = 20


@dataclass
class JobData:
    train: list[list[dict]]
    train_labels: list[str] | None
    valid: list[list[dict]]
    valid_labels: list[str] | None


def _options(config: TuneConfig) -> dict:
    return {"text_column": config.text_column, "label_column": config.label_column}


def validate_job_files(config: TuneConfig, tokenizer, context_length: int) -> None:
    """Raise ``InvalidDataError`` (naming the file's parameter) unless every file of the job is valid."""
    for param, path, minimum in (("training_file", config.training_file, MIN_EXAMPLES),
                                 ("validation_file", config.validation_file, 1)):
        if path is None:
            continue
        report = validate_any(path, config.data_format, tokenizer=tokenizer, context_length=context_length,
                              min_examples=minimum, **_options(config))
        if not report.valid:
            raise invalid_data(report, param=param)


def labels_for_split(messages, labels, config: TuneConfig):
    if labels is None and config.task == "classification":
        from tempering.train.classify import texts_and_labels

        return texts_and_labels(messages, None)[1]
    return labels


def class_count(messages, labels, config: TuneConfig) -> int | None:
    """How many classes a job learns, for the "auto" epochs (``config.resolve_hyperparameters``): a
    classification job's labels, or a chat job's final answers when they form a closed label set (the rule
    by which the job's evaluation reads training answers as labels: ``data.findings.training_label_set``);
    None for free-text answers."""
    if config.task == "classification":
        labels = labels_for_split(messages, labels, config)
        return len(set(labels)) if labels else None
    labels = training_label_set([final_answer(m) for m in messages])
    return len(labels) if labels else None


def split_for_job(messages, labels, config: TuneConfig, seed: int) -> JobData:
    """The job's seeded hold-out: a pure function of (data, config, seed), so it can be recomputed."""
    if len(messages) < MIN_EXAMPLES_FOR_HOLDOUT:
        return JobData(messages, labels, [], None)
    labels = labels_for_split(messages, labels, config)
    split = split_examples(messages, labels, config.validation_fraction, seed)
    train, valid = split.apply(messages)
    train_labels, valid_labels = split.apply(labels) if labels is not None else (None, None)
    return JobData(train, train_labels, valid, valid_labels)


def load_job_data(config: TuneConfig, tokenizer, context_length: int, seed: int) -> JobData:
    """Validate, load and split the job's files."""
    validate_job_files(config, tokenizer, context_length)
    return read_job_data(config, seed)


def read_job_data(config: TuneConfig, seed: int) -> JobData:
    """Load and split files already validated (the split is recomputed, never stored)."""
    messages, labels, _ = load_examples(Path(config.training_file), config.data_format, **_options(config))
    if config.validation_file is None:
        return split_for_job(messages, labels, config, seed)
    valid, valid_labels, _ = load_examples(Path(config.validation_file), config.data_format, **_options(config))
    return JobData(messages, labels, valid, valid_labels)
