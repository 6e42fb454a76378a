"""Exporting a project's fine-tuned model or checkpoint as a downloadable archive: ``tempering export`` (a
PEFT adapter folder, or the adapter merged into the base weights) zipped and stored as a new file of the
project (purpose ``fine-tune-results``), so it downloads, lists and deletes like any other file.

Names the API accepts: a fine-tuned id of the project (``ft:…``) or one of its checkpoints (``ft:…@step-N``,
``ft:…:ckpt-step-N``). Checkpoint folders by path are the CLI's only (a caller must not reach server paths),
and base models are not copied out (their weights come from their own repository). GGUF is the merged model as
one ``model.gguf`` with an Ollama ``Modelfile``. The work runs in the caller's thread: a merged export
of a 135M model takes seconds, a 3.8B one minutes (the CLI suits those better).

Takes the ``Database`` rather than a session for the reason ``services.datasets`` gives: no write lock is
held while the model is merged and zipped. Knows nothing about HTTP.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from tempering.errors import InvalidConfigError, ModelNotFoundError, not_found
from tempering.services._files import FileWriter
from tempering.store.models import File

PURPOSE = "fine-tune-results"
_STORED = (".safetensors", ".bin", ".pt")  # already dense: stored, not deflated


@dataclass(frozen=True)
class Exported:
    file: File  # the zip archive
    model: str  # canonical (checkpoints as <ft id>@step-NNNNNN)
    kind: str  # "fine-tuned" or "checkpoint"
    format: str  # "peft" or "merged"
    task: str
    dtype: str | None  # of merged weights
    files: list[str]  # inside the archive's folder


def check_owned(session, project_id: str, name: str) -> None:
    """``name`` is a fine-tuned model of this project or a checkpoint of one of its runs (the one owner check,
    ``services.models.owned_target``); a base model is refused (its weights come from its own repository)."""
    from tempering.services.models import owned_target

    target = owned_target(session, project_id, name)
    if target.kind == "base":
        from tempering.catalog import get_card

        card = get_card(target.name)
        raise InvalidConfigError(f"{card.id} is a base model: only fine-tuned models and their checkpoints are "
                                 f"exported here; its weights are {card.hf_repo or 'in the catalog'}",
                                 param="model", code="invalid_model")


def _zip(folder: Path, archive: Path, top: str) -> None:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                kind = zipfile.ZIP_STORED if path.suffix in _STORED else zipfile.ZIP_DEFLATED
                zf.write(path, f"{top}/{path.relative_to(folder).as_posix()}", compress_type=kind)


def export(db, project_id: str, store, model: str, format: str, *, dtype: str = "auto") -> Exported:
    """Export ``model`` as ``format`` (``peft`` or ``merged``; ``dtype`` of merged weights: auto, float32,
    bfloat16, float16) and store it as ``<model>-<format>.zip`` holding one folder of that name."""
    from tempering.export import default_out, export_model  # torch loads here

    with db.session(write=False) as session:
        check_owned(session, project_id, model)
    with FileWriter(store) as writer:
        try:
            result = export_model(model, format, writer.scratch / "model", dtype=dtype)
        except ModelNotFoundError as exc:  # an incomplete run or checkpoint; its message names server paths
            raise not_found("model", model, "model") from exc
        name = default_out(result.model, result.format).name
        archive = writer.scratch / "export.zip"
        _zip(result.path, archive, name)
        writer.store_file(archive, f"{name}.zip")
        [row] = writer.register(db, project_id, PURPOSE)
    return Exported(row, result.model, result.kind, result.format, result.task, result.dtype, result.files)
