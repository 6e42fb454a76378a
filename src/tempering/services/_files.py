"""Project files as the services see them: the owner check, and new files written under server ids and
registered in one short transaction, so that no stored file is without its row (nor a row without its file).

Knows nothing about HTTP; the message of a missing or foreign file is the one the files API answers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from sqlalchemy.orm import Session

from tempering.errors import TemperingError, not_found
from tempering.fileio import sha256_file
from tempering.store.models import File, looks_like_id, new_id

MAX_FILENAME = 512  # the column's size


def owned_file(session: Session, project_id: str, file_id: str, param: str = "file_id") -> File:
    """The project's live file ``file_id``; another project's, a deleted or an unknown one is NotFoundError."""
    row = session.get(File, file_id) if looks_like_id(file_id) else None
    if row is None or row.project_id != project_id or row.deleted:
        raise not_found("file", file_id[:80], param)
    return row


@contextlib.contextmanager
def named(paths: dict[Path, str]) -> Iterator[None]:
    """Domain errors raised while reading stored files name the uploaded filenames, never server paths."""
    try:
        yield
    except TemperingError as exc:
        message = exc.message
        for path, name in paths.items():
            message = message.replace(str(path), name)
        exc.message = message
        exc.args = (message,)
        raise


@dataclass
class NewFile:
    """Bytes stored under ``id``, not yet registered."""

    id: str
    filename: str
    bytes: int
    sha256: str
    status: str = "processed"
    status_details: str | None = None


class FileWriter:
    """Collects new files in the artifact store; ``register`` adds their rows in one write transaction.
    Used as a context manager: on any error before registering, the stored bytes are removed again."""

    def __init__(self, store):
        self.store = store
        self.files: list[NewFile] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Self:
        # under the store's root, so that the rename into place stays on one file system
        self._tmp = tempfile.TemporaryDirectory(prefix=".work-", dir=self.store.root)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._tmp.cleanup()
        if kind is not None:
            for new in self.files:
                self.store.delete(new.id)

    @property
    def scratch(self) -> Path:
        """A private folder for building a file before it is stored; removed on exit."""
        return Path(self._tmp.name)

    def store_file(self, built: Path, filename: str) -> NewFile:
        """Move ``built`` (a path under ``scratch``) into the store under a new file id."""
        file_id = new_id("file-")
        target = self.store.local_path(file_id)
        size, digest = built.stat().st_size, sha256_file(built)
        os.replace(built, target)
        new = NewFile(file_id, filename[-MAX_FILENAME:], size, digest)
        self.files.append(new)  # from here an error removes it, locally and from the shared store
        self.store.publish(file_id)
        return new

    def register(self, db, project_id: str, purpose: str) -> list[File]:
        """One row per stored file, in one short write transaction; refused (and the bytes removed) past the
        project's stored_bytes quota."""
        from tempering.services.quotas import check_stored_bytes

        with db.session() as session:
            check_stored_bytes(session, project_id, sum(f.bytes for f in self.files))
            rows = [File(id=f.id, project_id=project_id, filename=f.filename, purpose=purpose, bytes=f.bytes,
                         sha256=f.sha256, status=f.status, status_details=f.status_details) for f in self.files]
            session.add_all(rows)
            session.flush()  # fills the column defaults (created_at)
        return rows
