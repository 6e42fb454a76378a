"""The artifact store: uploaded files on disk under server-generated ids, written atomically.

A user-supplied filename is metadata only, never part of a path. Uploads are pushed to a temp file beside
their final path (never the system temp folder) with a size limit and a running sha256, then renamed into place.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from tempering.errors import TemperingError


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
        return self.size, self._digest.hexdigest()

    def abort(self) -> None:
        if not self._done:
            self._fh.close()
            self.tmp.unlink(missing_ok=True)
            self._done = True


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = root
        (root / "files").mkdir(parents=True, exist_ok=True)

    def file_path(self, file_id: str) -> Path:
        if not file_id.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"bad file id {file_id!r}")
        return self.root / "files" / file_id

    def open_upload(self, file_id: str, limit: int) -> UploadWriter:
        """A writer for the file's bytes, pushed as they arrive; ``commit`` renames it into place."""
        return UploadWriter(self.file_path(file_id), limit)

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
        self.file_path(file_id).unlink(missing_ok=True)
