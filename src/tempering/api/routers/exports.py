"""``/v1/exports``: a fine-tuned model or checkpoint of the project as a zip of a PEFT adapter or merged weights,
Tempering's own route. Synchronous: the answer names the stored archive, a file of the project downloaded
with ``GET /v1/files/{id}/content``. Parse, call ``services.exports``, render."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol_tools import ExportCreate, ExportObject
from tempering.api.routers.datasets import file_wire
from tempering.services import exports

router = APIRouter(prefix="/v1/exports", tags=["exports"], responses=ERROR_RESPONSES)


@router.post("", response_model=ExportObject)
def create_export(body: ExportCreate, request: Request, caller: CallerDep) -> ExportObject:
    """Export a fine-tuned model or checkpoint (seconds for a small model; merging a 3.8B one takes minutes)."""
    state = request.app.state
    done = exports.export(state.db, caller.project_id, state.store, body.model, body.format, dtype=body.dtype)
    return ExportObject(model=done.model, kind=done.kind, format=done.format, task=done.task, dtype=done.dtype,
                        files=done.files, file=file_wire(done.file))
