"""Uploaded files under server-generated ids, written atomically, shared through the artifact store.

A user-supplied filename is metadata only, never part of a path. Uploads are pushed to a temp file beside
their final path (never the system temp folder) with a size limit and a running sha256, then renamed into place
and, with a shared artifact store (``store.objects``), uploaded to it (multipart, with the sha256) before
``commit`` returns. ``file_path`` pulls a file this home does not hold from the shared store.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from tempering.errors import TemperingError
from tempering.store import objects


class UploadTooLarge(TemperingError):
    code = "file_too_large"


class UploadWriter:
    """One upload being written: a temp file beside its final path (so under the store, never in the system
    temp folder), the size limit checked and the sha256 updated on every write. ``abort`` after ``commit``
    does nothing, so ``try: … commit() finally: abort()`` leaves no half file whatever happens."""

    def __init__(self, target: Path, limit: int):
        self.target, self.limit = target, limit
        self.tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        self.size, self._digest = 0, hashlib.sha256()
        self._fh = self.tmp.open("xb")
        self._done = False

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(f"the file is larger than the {self.limit:,}-byte upload limit", param="file")
        self._digest.update(data)
        self._fh.write(data)

    def commit(self) -> tuple[int, str]:
        """Rename the bytes into place; returns (bytes, sha256)."""
        self._fh.close()
        os.replace(self.tmp, self.target)
        self._done = True
        digest = self._digest.hexdigest()
        try:
            objects.publish(self.target, digest)
        except BaseException:
            self.target.unlink(missing_ok=True)  # not shared, so not stored: the caller registers nothing
            raise
        return self.size, digest

    def abort(self) -> None:
        if not self._done:
            self._fh.close()
            self.tmp.unlink(missing_ok=True)
            self._done = True


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = root
        (root / "files").mkdir(parents=True, exist_ok=True)

    def local_path(self, file_id: str) -> Path:
        """Where the file's bytes are (or go) in this home."""
        if not file_id.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"bad file id {file_id!r}")
        return self.root / "files" / file_id

    def file_path(self, file_id: str) -> Path:
        """The file's local path, pulled from the shared artifact store when this home lacks it."""
        path = self.local_path(file_id)
        objects.pull(path)
        return path

    def publish(self, file_id: str) -> None:
        """Share a file put in place by other means than ``open_upload`` (a built export, a results file)."""
        objects.publish(self.local_path(file_id))

    def open_upload(self, file_id: str, limit: int) -> UploadWriter:
        """A writer for the file's bytes, pushed as they arrive; ``commit`` renames it into place."""
        return UploadWriter(self.local_path(file_id), limit)

    async def save_stream(self, file_id: str, chunks: AsyncIterator[bytes], limit: int) -> tuple[int, str]:
        """Write the chunks to the file's path; returns (bytes, sha256). Nothing is left on failure."""
        writer = self.open_upload(file_id, limit)
        try:
            async for chunk in chunks:
                writer.write(chunk)
            return writer.commit()
        finally:
            writer.abort()

    def delete(self, file_id: str) -> None:
        path = self.local_path(file_id)
        path.unlink(missing_ok=True)
        objects.remove(path, folder=False)
