"""Models a project may use: the catalog's base models, and the fine-tuned models and checkpoints of its
own jobs. Every model reference a caller sends (to deploy, evaluate, export, continue training) resolves
through ``owned_target``: one owner check, by the run behind the name (run id → job → project), so a
checkpoint of another project's unfinished job is as unreachable as its final model. A reference is an id,
never a path, and a failed lookup says "not found" and nothing more.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from sqlalchemy import select

from tempering.errors import ConflictError, ModelNotFoundError, TemperingError, not_found
from tempering.services import audit
from tempering.store import objects
from tempering.store.models import Job, Project
from tempering.train import refs

CATALOG_CREATED = 1_735_689_600  # the catalog's entries are fixed; a stable date keeps responses stable
BASE_OWNER = "tempering"


@dataclass(frozen=True)
class ModelEntry:
    id: str
    created: int
    owned_by: str


def default_project_id(session) -> str | None:
    """The server's first project: runs trained with the command line into the server's home (no job row)
    belong to it, as its owner is the one who runs the server."""
    return session.scalars(select(Project.id).order_by(Project.created_at, Project.id).limit(1)).first()


def _job_of_run(session, run_id: str) -> Job | None:
    return session.get(Job, f"ftjob-{run_id}")


def _may_use(session, project_id: str, ref: refs.Reference) -> bool:
    job = _job_of_run(session, ref.run_id)
    if job is None:  # a command-line run in the server's home
        return project_id == default_project_id(session)
    if job.project_id != project_id:
        return False
    if job.status == "succeeded" and job.fine_tuned_model is None:  # deleted, with its checkpoints
        return False
    return ref.kind == "checkpoint" or job.fine_tuned_model == ref.model


def owned_target(session, project_id: str, name: str, param: str = "model") -> refs.Target:
    """The target ``name`` points at if this project may use it; ``NotFoundError`` naming ``param``
    otherwise (the catalog's own message, which lists the catalog, for an unknown base model id)."""
    shown = name[:240]
    try:
        ref = refs.parse(name) if "\x00" not in name else None
    except ModelNotFoundError:
        ref = None
    if ref is None:
        raise not_found("model", shown, param)
    if ref.kind == "base":
        try:
            return refs.resolve(name)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(exc.message, param=param) from None
    if not _may_use(session, project_id, ref):
        raise not_found("model", shown, param)
    try:
        return refs.resolve(name)
    except ModelNotFoundError:  # its files are gone; the message would name server paths
        raise not_found("model", shown, param) from None


def _fine_tuned(session, project_id: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.project_id == project_id, Job.fine_tuned_model.is_not(None),
                                                  Job.status == "succeeded").order_by(Job.finished_at)))


def list_models(session, project_id: str) -> list[ModelEntry]:
    """The catalog's base models, then the project's fine-tuned models, oldest first."""
    from tempering.catalog import list_cards

    base = [ModelEntry(c.id, CATALOG_CREATED, BASE_OWNER) for c in list_cards()]
    tuned = [ModelEntry(j.fine_tuned_model, j.finished_at or j.created_at, project_id)
             for j in _fine_tuned(session, project_id)]
    return base + tuned


def get_model(session, project_id: str, model_id: str) -> ModelEntry:
    for model in list_models(session, project_id):
        if model.id == model_id:
            return model
    raise not_found("model", model_id[:240], "model")


def delete_model(session, project_id: str, model_id: str) -> None:
    """Delete a fine-tuned model of the project with its run's files; refused while any deployment serves it
    or one of its checkpoints."""
    from tempering.services.deployments import deployments_of_model
    from tempering.train import artifacts

    job = next((j for j in _fine_tuned(session, project_id) if j.fine_tuned_model == model_id), None)
    serving = deployments_of_model(session, model_id) if job is not None else []
    if serving:
        names = ", ".join(f"{d.name} ({d.id})" for d in serving)
        raise ConflictError(f"{model_id} has {len(serving)} deployment(s): {names}; delete them first",
                            param="model", code="model_has_deployments")
    if job is None:
        if any(m.id == model_id for m in list_models(session, project_id)):
            raise TemperingError(f"{model_id} is a base model; only fine-tuned models can be deleted",
                                 param="model", code="model_not_deletable", kind="forbidden")
        raise not_found("model", model_id[:240], "model")
    try:
        folder, _ = artifacts.resolve_finetuned(model_id)
        shutil.rmtree(folder, ignore_errors=True)
        objects.remove(folder, folder=True)  # and from a shared artifact store
    except ModelNotFoundError:  # its files are already gone: deleting it forgets the name
        pass
    job.fine_tuned_model = None
    audit.record(session, "model.deleted", project_id=project_id, target=model_id)
