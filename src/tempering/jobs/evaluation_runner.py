"""Runs one on-demand evaluation in its own process (``python -m tempering.jobs.runner EVAL_ID``: the job
runner hands ``eval-…`` ids here, so every executor runs evaluations as it runs jobs).

``queued`` → ``running`` → ``succeeded`` with the report, or ``failed`` with the error; the evaluation is the
one ``tempering eval`` runs (``evaluate.evaluate_file``), on the uploaded file. A cancel asked for before the
run starts ends it here; one asked for later is the worker's to carry out (it kills this process). Messages
and the report name the uploaded file, never the server's paths. Knows nothing about HTTP.
"""

from __future__ import annotations

import logging

from tempering.errors import InvalidDataError, TemperingError
from tempering.settings import get_settings
from tempering.store import webhooks
from tempering.store.artifacts import ArtifactStore
from tempering.store.db import Database
from tempering.store.models import Evaluation, File, now

log = logging.getLogger(__name__)

# evaluate_file's names for what the API calls otherwise (InvalidDataError names the training file)
WIRE_PARAMS = {"training_file": "data_file", "format": "data_format", "compare": "compare_model"}


def _finish(db: Database, evaluation_id: str, **fields) -> None:
    with db.session() as session:
        row = session.get(Evaluation, evaluation_id)
        if row.status not in ("queued", "running"):  # cancelled meanwhile: the cancel stands
            return
        for key, value in fields.items():
            setattr(row, key, value)
        row.finished_at = now()
        webhooks.evaluation_finished(session, row)  # committed with the final state, or not at all


def _start(db: Database, evaluation_id: str) -> tuple[Evaluation, str] | None:
    """Mark the evaluation running; None when it is to stop instead (and has been marked cancelled)."""
    with db.session() as session:
        row = session.get(Evaluation, evaluation_id)
        upload = session.get(File, row.data_file)
        if row.stop_requested == "cancel":
            row.status, row.finished_at = "cancelled", now()
            webhooks.evaluation_finished(session, row)
            return None
        row.status, row.started_at = "running", row.started_at or now()
        return row, upload.filename if upload is not None else row.data_file


def _scrub(message: str, replacements: dict[str, str]) -> str:
    for secret, shown in replacements.items():
        message = message.replace(secret, shown)
    return message


def run(evaluation_id: str) -> int:
    from tempering.evaluate import evaluate_file

    settings = get_settings()
    db = Database(settings.database)
    started = _start(db, evaluation_id)
    if started is None:
        return 0
    row, filename = started
    store = ArtifactStore(settings.artifacts_dir)
    path = store.file_path(row.data_file)
    options = dict(row.options)
    train_file = options.pop("train_file", None)
    train_data = store.file_path(train_file) if train_file else None
    shown = f"{filename} ({row.data_file})"
    replacements = {str(path): shown, str(settings.root): "TEMPERING_HOME"}
    if train_data is not None:
        replacements = {str(train_data): train_file, **replacements}
    try:
        for file_id, file_path in ((row.data_file, path), (train_file, train_data)):
            if file_path is not None and not file_path.is_file():
                raise InvalidDataError(f"the file {file_id} was deleted")
        report = evaluate_file(row.model, path, compare=row.compare_model, train_data=train_data, device="auto",
                               **options)
    except TemperingError as exc:
        message = _scrub(exc.message, replacements)
        param = WIRE_PARAMS.get(exc.param, exc.param)
        if isinstance(exc, InvalidDataError):  # which file: the message names it
            param = "train_file" if train_file and train_file in message and shown not in message else "data_file"
        error = {"code": exc.code, "message": message, "param": param}
        _finish(db, evaluation_id, status="failed", error=error)
        return 0
    except Exception as exc:  # a bug, an engine error, memory or disk: the evaluation fails, saying which
        from tempering.jobs.runner import failure

        log.exception("evaluation %s failed", evaluation_id)
        _finish(db, evaluation_id, status="failed", error=failure(exc, replacements))
        return 0
    report.data = shown
    _finish(db, evaluation_id, status="succeeded", report=report.model_dump(mode="json"))
    return 0

