"""``/v1/files``: upload (streamed to disk under a server id, size-limited, validated), list, get, content,
delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select

from tempering.api.deps import CallerDep, SessionDep, owned_row
from tempering.api.errors import ERROR_RESPONSES, APIError
from tempering.api.protocol import FileDeleted, FileObject, ListPage
from tempering.store.models import File, new_id

router = APIRouter(prefix="/v1/files", tags=["files"], responses=ERROR_RESPONSES)
PURPOSES = ("fine-tune", "fine-tune-results", "evals")
SHOWN_PROBLEMS = 20
MAX_FILENAME = 512  # the column's size


def to_wire(row: File) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                      purpose=row.purpose, status=row.status, status_details=row.status_details)


def owned_file(session, project_id: str, file_id: str, param: str = "file_id") -> File:
    return owned_row(session, File, file_id, project_id, "file", param)


async def _chunks(upload: UploadFile, size: int = 1 << 20):
    while chunk := await upload.read(size):
        yield chunk


def _check(path, filename: str) -> tuple[str, str | None]:
    """(status, status_details): the data platform's structural checks, every problem with its line.
    Messages name the uploaded filename, never the server's path."""
    from tempering.data.formats import validate_any
    from tempering.errors import TemperingError

    try:
        try:
            report = validate_any(path)
        except TemperingError:  # no format recognisable: report it line by line as the canonical chat format
            report = validate_any(path, "chat")
    except TemperingError as exc:
        return "error", exc.message.replace(str(path), filename)
    if report.valid:
        return "processed", None
    problems = [f"line {i.line}: {i.message} [{i.code}]" if i.line else f"{i.message} [{i.code}]"
                for i in report.errors]
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return "error", "; ".join(problems[:SHOWN_PROBLEMS]) + more


@router.post("", response_model=FileObject,
             responses={413: {**ERROR_RESPONSES["default"], "description": "Larger than the upload limit"}})
async def upload(request: Request, caller: CallerDep, file: UploadFile,
                 purpose: Annotated[str, Form()]) -> FileObject:
    if purpose not in ("fine-tune", "evals"):
        raise APIError(400, f"purpose must be 'fine-tune' or 'evals', got {purpose!r}", param="purpose")
    filename = file.filename or "upload.jsonl"
    if len(filename) > MAX_FILENAME or "\x00" in filename:
        raise APIError(400, f"the file name must be at most {MAX_FILENAME} characters, without NUL",
                       param="file", code="invalid_value")
    limit = request.app.state.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise APIError(413, f"the upload is larger than the {limit:,}-byte limit", param="file",
                       code="file_too_large")
    store = request.app.state.store
    file_id = new_id("file-")
    size, sha256 = await store.save_stream(file_id, _chunks(file), limit)
    from starlette.concurrency import run_in_threadpool

    status, details = await run_in_threadpool(_check, store.file_path(file_id), filename)
    row = File(id=file_id, project_id=caller.project_id, filename=filename,
               purpose=purpose, bytes=size, sha256=sha256, status=status, status_details=details)
    with request.app.state.db.session() as session:  # a short write once the bytes are on disk
        session.add(row)
        session.flush()  # fills the column defaults (created_at)
        wire = to_wire(row)
    if status == "error":  # the record stays (status "error") so it can be inspected and deleted
        raise APIError(400, f"{filename}: invalid training data ({file_id}): {details}", param="file",
                       code="invalid_file")
    return wire


@router.get("", response_model=ListPage[FileObject])
def list_files(caller: CallerDep, session: SessionDep,
               purpose: Annotated[str | None, Query(max_length=64, description="Only files of this purpose "
                                                    f"({', '.join(PURPOSES)})")] = None) -> ListPage[FileObject]:
    if purpose and purpose not in PURPOSES:  # no file has it; never sent to the database
        return ListPage[FileObject](data=[])
    query = select(File).where(File.project_id == caller.project_id, File.deleted.is_(False))
    if purpose:
        query = query.where(File.purpose == purpose)
    rows = session.scalars(query.order_by(File.created_at.desc(), File.id)).all()
    return ListPage[FileObject](data=[to_wire(r) for r in rows])


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, caller: CallerDep, session: SessionDep) -> FileObject:
    return to_wire(owned_file(session, caller.project_id, file_id))


@router.get("/{file_id}/content", response_class=FileResponse,
            responses={200: {"description": "The file's bytes as uploaded",
                             "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                 "format": "binary"}}}}})
def file_content(file_id: str, request: Request, caller: CallerDep, session: SessionDep):
    row = owned_file(session, caller.project_id, file_id)
    return FileResponse(request.app.state.store.file_path(row.id), media_type="application/octet-stream",
                        filename=row.filename)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, request: Request, caller: CallerDep, session: SessionDep) -> FileDeleted:
    row = owned_file(session, caller.project_id, file_id)
    row.deleted = True
    request.app.state.store.delete(row.id)
    return FileDeleted(id=row.id)
