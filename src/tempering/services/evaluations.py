"""On-demand evaluations: evaluate a model (and a baseline) on a data file of the project. Creating one
validates everything up front (the file is the project's and usable, the models exist and are the project's,
the two can be compared) and queues it; a job worker claims and runs it, never the request.
"""

from __future__ import annotations

from sqlalchemy import select

from tempering.errors import InvalidStateError, TemperingError, not_found
from tempering.services._files import owned_file
from tempering.store import webhooks
from tempering.store.models import Evaluation, looks_like_id, now
from tempering.store.pages import Page, newest_first

DATA_PURPOSES = ("fine-tune", "evals")


def owned_evaluation(session, project_id: str, evaluation_id: str) -> Evaluation:
    row = session.get(Evaluation, evaluation_id) if looks_like_id(evaluation_id) else None
    if row is None or row.project_id != project_id:
        raise not_found("evaluation", evaluation_id[:80], "evaluation_id")
    return row


def _data_file(session, project_id: str, file_id: str, param: str = "data_file"):
    row = owned_file(session, project_id, file_id, param)
    if row.status != "processed" or row.purpose not in DATA_PURPOSES:
        raise TemperingError(f"file {row.id} cannot be used (purpose {row.purpose}, status {row.status}; "
                             f"needs a processed file of purpose {' or '.join(DATA_PURPOSES)})", param=param,
                             code="invalid_file")
    return row


def _check_all(*checks) -> list:
    """Run every check; raise the first problem with all of the messages, so one answer names them all."""
    results, problems = [], []
    for check in checks:
        try:
            results.append(check())
        except TemperingError as exc:
            problems.append(exc)
            results.append(None)
    if problems:
        first = problems[0]
        raise TemperingError("; ".join(p.message for p in problems), param=first.param, code=first.code,
                             kind=first.kind)
    return results


def create_evaluation(session, project_id: str, *, model: str, data_file: str, compare_model: str | None,
                      train_file: str | None, options: dict) -> Evaluation:
    from tempering.services.models import owned_target

    compare = compare_model if compare_model not in ("base", "none") else None
    data, candidate, baseline = _check_all(
        lambda: _data_file(session, project_id, data_file),
        lambda: owned_target(session, project_id, model, "model"),
        lambda: owned_target(session, project_id, compare, "compare_model") if compare else None,
        lambda: _data_file(session, project_id, train_file, "train_file") if train_file else None)[:3]
    if compare_model == "base" and candidate.kind != "base":
        baseline = owned_target(session, project_id, candidate.base_model, "compare_model")
    if baseline is not None and baseline.task == "classification" and candidate.task != "classification":
        raise TemperingError("a chat model cannot be compared against a classification model; swap them",
                             param="compare_model", code="invalid_value")
    row = Evaluation(project_id=project_id, model=model, data_file=data.id,
                     compare_model=baseline.name if baseline is not None else None, options=options,
                     status="queued")
    session.add(row)
    session.flush()
    return row


def list_evaluations(session, project_id: str, *, after: str | None, limit: int) -> Page:
    anchor = owned_evaluation(session, project_id, after) if after else None
    return newest_first(session, select(Evaluation).where(Evaluation.project_id == project_id), Evaluation,
                        anchor, limit)


def cancel_evaluation(session, project_id: str, evaluation_id: str) -> Evaluation:
    """A waiting evaluation is cancelled at once; a running one when its worker next renews its lease (its
    process is stopped: an evaluation keeps nothing half-done)."""
    row = owned_evaluation(session, project_id, evaluation_id)
    if row.status in ("succeeded", "failed", "cancelled"):
        raise InvalidStateError(f"evaluation {row.id} already {row.status}", param="evaluation_id")
    if row.status == "queued" and row.worker_id is None:
        row.status, row.finished_at = "cancelled", now()
        webhooks.evaluation_finished(session, row)
    else:
        row.stop_requested = "cancel"
    return row


def of_job(session, project_id: str, job_id: str):
    """The evaluation a fine-tuning job wrote after training (base vs fine-tuned, ``evaluation.json`` in its run
    folder); None while it has none (not finished, evaluation off, or its files gone)."""
    from tempering.errors import ModelNotFoundError
    from tempering.evaluate.report import read_report
    from tempering.services.jobs import owned_job
    from tempering.train import artifacts

    job = owned_job(session, project_id, job_id)
    if not job.fine_tuned_model:
        return None
    try:
        folder, _ = artifacts.resolve_finetuned(job.fine_tuned_model)
    except ModelNotFoundError:
        return None
    return read_report(folder.parent)
