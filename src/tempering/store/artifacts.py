"""The artifact store: uploaded files on disk under server-generated ids, written atomically.

A user-supplied filename is metadata only, never part of a path. Uploads stream to a temp file with a
size limit and a running sha256, then are renamed into place.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from tempering.errors import TemperingError


class UploadTooLarge(TemperingError):
    code = "file_too_large"


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = root
        (root / "files").mkdir(parents=True, exist_ok=True)

    def file_path(self, file_id: str) -> Path:
        if not file_id.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"bad file id {file_id!r}")
        return self.root / "files" / file_id

    async def save_stream(self, file_id: str, chunks: AsyncIterator[bytes], limit: int) -> tuple[int, str]:
        """Write the chunks to the file's path; returns (bytes, sha256). Nothing is left on failure."""
        target = self.file_path(file_id)
        tmp = target.with_name(f".{file_id}.{os.getpid()}.tmp")
        digest, size = hashlib.sha256(), 0
        try:
            with tmp.open("wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise UploadTooLarge(f"the file is larger than the {limit:,}-byte upload limit",
                                             param="file")
                    digest.update(chunk)
                    fh.write(chunk)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return size, digest.hexdigest()

    def delete(self, file_id: str) -> None:
        self.file_path(file_id).unlink(missing_ok=True)
