"""A project's data files before any job runs: the quality report, conversion to canonical JSONL, the seeded
split, and the estimate of a job (tokens, time, cost), for files uploaded to the artifact store. The same
work as ``tempering data report|convert|split`` and ``tempering tune --estimate``, through the same core
functions, on files named by id.

A file of another project, a deleted or an unknown one is ``NotFoundError``, the same answer the files API
gives. Messages name the uploaded filename, never a server path. Derived files inherit the source's purpose,
and their status is the verdict of the same checks an upload gets.

``report`` and ``estimate`` only read and take a session. ``convert`` and ``split`` write new files and take
the ``Database``: reading, converting and validating a file (up to the upload limit) must not hold SQLite's
write lock, which a writing transaction takes when it begins and the workers' heartbeats need. So they look
the source up in a short read transaction, store the bytes under new ids, and register them in one short
write transaction; the bytes are removed if anything fails before that commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from tempering.data.formats import ConversionReport, read_examples, validate_any, write_jsonl
from tempering.data.report import DataReport, report_files
from tempering.data.split import SplitResult, split_examples
from tempering.data.validate import MIN_EXAMPLES
from tempering.errors import InvalidConfigError, InvalidDataError, TemperingError
from tempering.services._files import FileWriter, NewFile, named, owned_file
from tempering.store.models import File

DATA_PURPOSES = ("fine-tune", "evals")
TARGETS = ("chat", "classification")
log = logging.getLogger(__name__)
SHOWN_PROBLEMS = 20


def data_file(session: Session, project_id: str, file_id: str, param: str = "file_id") -> File:
    """The project's file ``file_id``, which must hold data (purpose fine-tune or evals), valid or not."""
    row = owned_file(session, project_id, file_id, param)
    if row.purpose not in DATA_PURPOSES:
        raise TemperingError(f"file {row.id} holds no training data (purpose {row.purpose}; needs "
                             f"{' or '.join(DATA_PURPOSES)})", param=param, code="invalid_file")
    return row


def check_file(path: Path, filename: str, min_examples: int = MIN_EXAMPLES) -> tuple[str, str | None]:
    """(status, status_details) of a stored file: the data platform's structural checks, as for an upload,
    every problem with its line."""
    try:
        try:
            report = validate_any(path, min_examples=min_examples)
        except TemperingError:  # no format recognisable: report it line by line as the canonical chat format
            report = validate_any(path, "chat", min_examples=min_examples)
    except TemperingError as exc:
        return "error", exc.message.replace(str(path), filename)
    except (RecursionError, MemoryError, ValueError, UnicodeError, OSError) as exc:
        # a reader's failure on hostile input is the file's problem, reported as such (never a 500)
        log.warning("checking %s (%s) failed: %r", filename, path.name, exc)
        return "error", f"{filename} could not be read as training data ({type(exc).__name__})"
    if report.valid:
        return "processed", None
    return "error", _problems(report.errors)


def file_issues(session: Session, project_id: str, store, file_id: str) -> list:
    """Every problem of a project's data file with its line (``data.validate.Issue``), as the upload's checks
    found them (``check_file``'s summary keeps the first few): the portal's validation table."""
    from tempering.data.validate import Issue

    row = data_file(session, project_id, file_id)
    path = store.file_path(row.id)
    minimum = 1 if row.purpose == "evals" else MIN_EXAMPLES
    try:
        try:
            report = validate_any(path, min_examples=minimum)
        except TemperingError:
            report = validate_any(path, "chat", min_examples=minimum)
    except TemperingError as exc:
        return [Issue(line=None, code=exc.code or "invalid_file", message=exc.message.replace(str(path),
                                                                                            row.filename))]
    except (RecursionError, MemoryError, ValueError, UnicodeError, OSError) as exc:
        return [Issue(line=None, code="unreadable", message=f"{row.filename} could not be read as training data "
                                                            f"({type(exc).__name__})")]
    return list(report.errors) + list(report.warnings)


def _problems(issues) -> str:
    problems = [f"line {i.line}: {i.message} [{i.code}]" if i.line else f"{i.message} [{i.code}]" for i in issues]
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return "; ".join(problems[:SHOWN_PROBLEMS]) + more


# ---------------------------------------------------------------- report


def report(session: Session, project_id: str, store, file_id: str, *, validation_file_id: str | None = None,
           model: str | None = None, format: str | None = None, text_column: str | None = None,
           label_column: str | None = None) -> DataReport:
    """The quality report of ``tempering data report`` on a file (and a validation file). With a catalog
    ``model``, tokens are counted through its chat template and checked against its context (loading its
    tokenizer; the embedded default is prepared once, about half a minute); without one, no token counts."""
    from tempering import catalog

    train = data_file(session, project_id, file_id)
    valid = data_file(session, project_id, validation_file_id, "validation_file") if validation_file_id else None
    tokenizer, card = None, None
    if model is not None:
        card = catalog.get_card(model)  # ModelNotFoundError: unknown, naming the catalog
        tokenizer = catalog.load_tokenizer(card)
    paths = {store.file_path(row.id): row.filename for row in (train, valid) if row is not None}
    with named(paths):
        result = report_files(store.file_path(train.id), store.file_path(valid.id) if valid else None,
                              format=format, text_column=text_column, label_column=label_column,
                              tokenizer=tokenizer, context_length=card.context_length if card else None,
                              model=card.id if card else None)
    result.train_file, result.validation_file = train.id, valid.id if valid else None
    return result


# ---------------------------------------------------------------- convert and split


@dataclass(frozen=True)
class Converted:
    source: File
    file: File
    conversion: ConversionReport  # the source's conversion: format, problems by line, counts
    skipped: int  # examples left out because they failed to convert


@dataclass(frozen=True)
class Split:
    source: File
    train: File
    validation: File
    result: SplitResult
    conversion: ConversionReport
    skipped: int


def _read(store, source: File, format, text_column, label_column, skip_invalid: bool):
    """The source's examples and conversion report; bad lines stop it unless ``skip_invalid``."""
    path = store.file_path(source.id)
    with named({path: source.filename}):
        examples, conversion = read_examples(path, format, text_column=text_column, label_column=label_column)
    conversion.path = source.filename
    if not examples or (conversion.errors and not skip_invalid):
        hint = "" if not examples else "; fix the lines or pass skip_invalid to leave them out"
        raise TemperingError(f"{source.filename}: not converted: {conversion.stats.get('converted', 0)} of "
                             f"{conversion.stats.get('examples', 0)} example(s) converted: "
                             f"{_problems(conversion.errors)}{hint}", param="file_id", code="invalid_file")
    return examples, conversion


def _stem(filename: str) -> str:
    return Path(filename).name.split(".")[0] or "data"


def _write(writer: FileWriter, examples, to: str, filename: str, min_examples: int) -> NewFile:
    built = writer.scratch / "build.jsonl"
    try:
        write_jsonl(examples, built, to)
    except InvalidDataError as exc:  # a multi-turn example cannot become a classification row
        raise InvalidConfigError(f"{filename}: {exc.message}; write chat JSONL instead", param="to") from exc
    new = writer.store_file(built, filename)
    new.status, new.status_details = check_file(writer.store.file_path(new.id), filename, min_examples)
    return new


def _check_target(to: str) -> None:
    if to not in TARGETS:
        raise InvalidConfigError(f"to must be one of {', '.join(TARGETS)} (got {to!r})", param="to")


def convert(db, project_id: str, store, file_id: str, *, format: str | None = None,
            text_column: str | None = None, label_column: str | None = None, to: str = "chat",
            skip_invalid: bool = False) -> Converted:
    """Any supported format → canonical chat JSONL (``{"messages"}``), or classification rows
    (``{"text", "label"}``) with ``to="classification"``, stored as a new file of the project."""
    _check_target(to)
    with db.session(write=False) as session:
        source = data_file(session, project_id, file_id)
    examples, conversion = _read(store, source, format, text_column, label_column, skip_invalid)
    with FileWriter(store) as writer:
        _write(writer, examples, to, f"{_stem(source.filename)}.{to}.jsonl", MIN_EXAMPLES)
        [row] = writer.register(db, project_id, source.purpose)
    return Converted(source, row, conversion, conversion.stats["examples"] - len(examples))


def split(db, project_id: str, store, file_id: str, *, validation_fraction: float = 0.1, seed: int = 0,
          format: str | None = None, text_column: str | None = None, label_column: str | None = None,
          to: str = "chat", skip_invalid: bool = False) -> Split:
    """``tempering data split`` on a stored file: seeded, stratified by label (the classification format's,
    or answers that look like labels), examples sharing a prompt kept on one side; the two halves are stored
    as new files of the project (``<name>.train.jsonl``, ``<name>.validation.jsonl``)."""
    from tempering.data.findings import infer_labels

    _check_target(to)
    with db.session(write=False) as session:
        source = data_file(session, project_id, file_id)
    examples, conversion = _read(store, source, format, text_column, label_column, skip_invalid)
    messages = [e.messages for e in examples]
    labels = [e.label for e in examples] if conversion.format == "classification" else infer_labels(messages)
    result = split_examples(messages, labels, validation_fraction, seed)
    train, valid = result.apply(examples)
    if not valid:
        why = "; ".join(result.notes) or "every example shares one prompt"
        raise InvalidConfigError(f"{source.filename}: nothing can be held out for validation from "
                                 f"{len(examples)} example(s) ({why})", param="validation_fraction")
    stem = _stem(source.filename)
    with FileWriter(store) as writer:
        _write(writer, train, to, f"{stem}.train.jsonl", MIN_EXAMPLES)
        _write(writer, valid, to, f"{stem}.validation.jsonl", 1)  # a validation file may be small
        train_row, valid_row = writer.register(db, project_id, source.purpose)
    return Split(source, train_row, valid_row, result, conversion, conversion.stats["examples"] - len(examples))
