"""Uploaded files: registering an upload (its bytes already in the artifact store under a new id) after the
data platform's checks, listing, deleting. A stored file always has its row and a row its file: a failure
between the two removes the bytes again, and what a killed process left (bytes without a row, a temp file)
is removed by ``sweep_orphans`` when a server starts. A file a queued or running job will read cannot be
deleted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass

from sqlalchemy import event, select

from tempering.data.validate import MIN_EXAMPLES
from tempering.errors import ConflictError, TemperingError
from tempering.services._files import MAX_FILENAME, owned_file
from tempering.store.models import File

log = logging.getLogger(__name__)
PURPOSES = ("fine-tune", "fine-tune-results", "evals")
# How old an unregistered file must be before a sweep removes it: bytes are registered right after they are
# stored (an upload being checked is locked besides), so anything older was left by a process that died.
ORPHAN_GRACE_SECONDS = 60.0
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
    with status "error" and its problems, so it can be inspected and deleted. Evaluation files may be small.
    Bytes that would pass the project's stored_bytes quota are removed and refused (413)."""
    from tempering.services.datasets import check_file
    from tempering.services.quotas import check_stored_bytes

    try:
        minimum = 1 if upload.purpose == "evals" else MIN_EXAMPLES
        with _held(store.file_path(file_id)):  # not an orphan, however long the checks take
            status, details = check_file(store.file_path(file_id), upload.filename, minimum)
            with db.session() as session:  # a short write once the bytes are on disk
                check_stored_bytes(session, project_id, size)  # uploads racing for the last bytes: one wins
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


def content_path(session, project_id: str, store, file_id: str):
    """A file of the project and where its bytes are, to download (the API's ``/content``, the portal's
    download link); an internal error naming the file when the row outlived its bytes (a restore without
    artifacts, a disk lost)."""
    row = owned_file(session, project_id, file_id)
    path = store.file_path(row.id)
    if not path.is_file():
        raise TemperingError(f"the bytes of {row.id} are missing from the artifact store", param="file_id",
                             code="file_missing", kind="internal")
    return row, path


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
    # the bytes go once the row says so: a commit that fails (or a server killed before it) keeps both
    file_id = row.id
    event.listen(session, "after_commit", lambda _: store.delete(file_id), once=True)
    return row


class _held:
    """A shared lock on a stored file while it is being registered; ``sweep_orphans`` leaves locked files."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # releases the lock


def _unlocked(path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def sweep_orphans(db, store, grace_seconds: float = ORPHAN_GRACE_SECONDS) -> list[str]:
    """Remove what processes killed mid-write left in the artifact store: stored bytes without a row (a server
    killed while checking an upload), temp files of unfinished writes, and scratch folders. Only entries older
    than ``grace_seconds`` and not locked by a live registration are touched, so a server starting beside
    others sharing the home never removes their work in progress. Returns the names removed."""
    folder = store.root / "files"
    cutoff = time.time() - grace_seconds
    entries = [p for p in folder.iterdir() if p.lstat().st_mtime < cutoff]
    entries += [p for p in store.root.glob(".work-*") if p.lstat().st_mtime < cutoff]
    if not entries:
        return []
    with db.session(write=False) as session:
        known = set(session.scalars(select(File.id).where(File.id.in_([p.name for p in entries]))))
    removed = []
    for path in entries:
        if path.name in known or (path.is_file() and not path.name.startswith(".") and not _unlocked(path)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith("."):
            path.unlink(missing_ok=True)
        else:
            store.delete(path.name)  # its copy in a shared artifact store too
        removed.append(path.name)
    if removed:
        log.warning("removed %d file(s) left by a crash: %s", len(removed), ", ".join(removed[:10]))
    return removed
