"""``/v1/files``: upload (streamed to disk under a server id, size-limited, validated), list, get, content,
delete. The rules live in ``services.files``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from tempering.api import uploads
from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES, APIError
from tempering.api.permissions import CallerDep
from tempering.api.protocol import FileDeleted, FileObject, ListPage
from tempering.errors import TemperingError
from tempering.services import _files, files, quotas
from tempering.store.models import File, new_id

router = APIRouter(prefix="/v1/files", tags=["files"], responses=ERROR_RESPONSES)


def to_wire(row: File) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                      purpose=row.purpose, status=row.status, status_details=row.status_details)


def owned_file(session, project_id: str, file_id: str, param: str = "file_id") -> File:
    return _files.owned_file(session, project_id, file_id, param)


@router.post("", response_model=FileObject, openapi_extra={"requestBody": uploads.UPLOAD_BODY},
             responses={413: {**ERROR_RESPONSES["default"], "description": "Larger than the upload limit"}})
async def upload(request: Request, caller: CallerDep) -> FileObject:
    """Upload a data file (multipart: ``file`` and ``purpose``). The key is checked and the declared length
    held against the limit before the body is read; the body is then streamed into the artifact store."""
    limit = request.app.state.settings.max_upload_bytes
    uploads.check_declared_length(request, limit)
    room, quota = await run_in_threadpool(quotas.stored_bytes_room, request.app.state.db, caller.project_id)
    if room < limit:  # the project's stored_bytes quota is the tighter bound: refused naming it
        try:
            uploads.check_declared_length(request, room)
        except APIError:
            raise quotas.stored_bytes_exceeded(None, quota, quota - room) from None
    store = request.app.state.store
    file_id = new_id("file-")
    try:
        got = await uploads.receive_upload(request, store, file_id, min(limit, room))
    except (APIError, TemperingError) as exc:
        if getattr(exc, "code", None) == "file_too_large" and room < limit:
            raise quotas.stored_bytes_exceeded(None, quota, quota - room) from None
        raise
    row = await run_in_threadpool(files.register_upload, request.app.state.db, caller.project_id, store, file_id,
                                  got.upload, got.size, got.sha256)
    if row.status == "error":  # the record stays (status "error") so it can be inspected and deleted
        raise APIError(400, f"{got.upload.filename}: invalid training data ({file_id}): {row.status_details}",
                       param="file", code="invalid_file")
    return to_wire(row)


@router.get("", response_model=ListPage[FileObject])
def list_files(caller: CallerDep, session: SessionDep,
               purpose: Annotated[str | None, Query(max_length=64, description="Only files of this purpose "
                                                    f"({', '.join(files.PURPOSES)})")] = None) -> ListPage[FileObject]:
    return ListPage[FileObject](data=[to_wire(r) for r in files.list_files(session, caller.project_id, purpose)])


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, caller: CallerDep, session: SessionDep) -> FileObject:
    return to_wire(owned_file(session, caller.project_id, file_id))


@router.get("/{file_id}/content", response_class=FileResponse,
            responses={200: {"description": "The file's bytes as uploaded",
                             "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                 "format": "binary"}}}}})
def file_content(file_id: str, request: Request, caller: CallerDep, session: SessionDep):
    row, path = files.content_path(session, caller.project_id, request.app.state.store, file_id)
    return FileResponse(path, media_type="application/octet-stream", filename=row.filename)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, request: Request, caller: CallerDep, session: SessionDep) -> FileDeleted:
    return FileDeleted(id=files.delete_file(session, caller.project_id, request.app.state.store, file_id).id)
