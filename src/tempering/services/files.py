"""Uploaded files: registering an upload (its bytes already in the artifact store under a new id) after the
data platform's checks, listing, deleting. A stored file always has its row and a row its file: a failure
between the two removes the bytes again. A file a queued or running job will read cannot be deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from tempering.data.validate import MIN_EXAMPLES
from tempering.errors import ConflictError, TemperingError
from tempering.services._files import MAX_FILENAME, owned_file
from tempering.store.models import File

PURPOSES = ("fine-tune", "fine-tune-results", "evals")
UPLOAD_PURPOSES = ("fine-tune", "evals")


@dataclass(frozen=True)
class Upload:
    """What the edge knows before the bytes arrive."""

    filename: str
    purpose: str


def check_filename(filename: str | None) -> str:
    """The upload's name (metadata only, never a path), checked as soon as its part's headers arrive."""
    filename = filename or "upload.jsonl"
    if len(filename) > MAX_FILENAME or "\x00" in filename:
        raise TemperingError(f"the file name must be at most {MAX_FILENAME} characters, without NUL",
                             param="file", code="invalid_value")
    return filename


def check_purpose(purpose: str) -> str:
    if purpose not in UPLOAD_PURPOSES:
        raise TemperingError(f"purpose must be 'fine-tune' or 'evals', got {purpose[:40]!r}", param="purpose",
                             code="invalid_value")
    return purpose


def check_upload(filename: str | None, purpose: str) -> Upload:
    """The upload's name and purpose, checked before its bytes are kept."""
    return Upload(check_filename(filename), check_purpose(purpose))


def register_upload(db, project_id: str, store, file_id: str, upload: Upload, size: int, sha256: str) -> File:
    """Check the stored bytes (every problem with its line) and add the file's row; an invalid file is kept
    with status "error" and its problems, so it can be inspected and deleted. Evaluation files may be small."""
    from tempering.services.datasets import check_file

    try:
        minimum = 1 if upload.purpose == "evals" else MIN_EXAMPLES
        status, details = check_file(store.file_path(file_id), upload.filename, minimum)
        with db.session() as session:  # a short write once the bytes are on disk
            row = File(id=file_id, project_id=project_id, filename=upload.filename, purpose=upload.purpose,
                       bytes=size, sha256=sha256, status=status, status_details=details)
            session.add(row)
            session.flush()  # fills the column defaults (created_at)
            session.expunge(row)
    except BaseException:
        store.delete(file_id)  # never a file without its row
        raise
    return row


def list_files(session, project_id: str, purpose: str | None = None) -> list[File]:
    if purpose and purpose not in PURPOSES:  # no file has it; never sent to the database
        return []
    query = select(File).where(File.project_id == project_id, File.deleted.is_(False))
    if purpose:
        query = query.where(File.purpose == purpose)
    return list(session.scalars(query.order_by(File.created_at.desc(), File.id)))


def delete_file(session, project_id: str, store, file_id: str) -> File:
    """Delete a file; refused while a job that has not finished will read it (it would fail later with a
    vague error)."""
    from tempering.services.jobs import jobs_reading

    row = owned_file(session, project_id, file_id)
    readers = jobs_reading(session, row.id)
    if readers:
        names = ", ".join(j.id for j in readers[:5])
        raise ConflictError(f"file {row.id} is used by {len(readers)} unfinished fine-tuning job(s): {names}; "
                            "cancel them or wait for them to finish", param="file_id", code="file_in_use")
    row.deleted = True
    store.delete(row.id)
    return row
