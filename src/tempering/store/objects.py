"""The artifact store: where everything under ``TEMPERING_HOME`` that is not the database lives, shared.

Artifacts are keyed by their path relative to the home (``artifacts/files/<id>``, ``runs/<id>/run.json``,
``runs/<id>/checkpoints/step-000012/COMPLETE``, ``runs/<id>/model/tempering.json``, …). Two implementations
of one small interface (``ObjectStore``): ``LocalObjects``, folders on a file system, and ``S3Objects``,
S3-compatible object storage through obstore (AWS S3, MinIO, SeaweedFS, Ceph, GCS and Azure through their
S3 endpoints; endpoint and credentials from the usual ``AWS_*`` variables).

``TEMPERING_ARTIFACTS_URL`` unset (the embedded default): the home *is* the store, and every function here
is a no-op. Set (``s3://bucket/prefix``, or ``file:///mnt/shared`` for a mounted share): the local home
is a working copy and a cache. Writers still write locally (temp folder, rename) and then *publish* at
well-defined points: a folder's files first and its completion marker object last, so a reader that sees
the marker sees a whole checkpoint or model. Readers *pull* what they miss: a folder only once its marker
is in the store, into a temp folder renamed into place. On S3 every object carries its sha256 (an object
attribute, ``x-amz-meta-sha256``), checked on download. Pulled folders and files form a cache bounded by
``TEMPERING_ARTIFACTS_CACHE_BYTES``, the least recently used evicted first (only what the store holds).

Knows nothing of torch, models, runs or HTTP: callers say which paths and which marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tempering.errors import TemperingError
from tempering.fileio import sha256_file
from tempering.settings import get_settings

CHUNK = 8 * 1024 * 1024
SHA_ATTRIBUTE = "sha256"  # an object's sha256, stored as an attribute (x-amz-meta-sha256 on S3)


class ArtifactStoreError(TemperingError):
    """The artifact store failed or holds something unexpected (a checksum mismatch, an unreachable bucket)."""

    code = "artifact_store_error"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None


class ObjectStore(ABC):
    """Objects under string keys (``/``-separated, relative, no ``..``)."""

    url: str

    @abstractmethod
    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        """Store the file's bytes under ``key`` whole or not at all (multipart for big files on S3)."""

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> bool:
        """Write the object to ``dest`` (checked against its stored sha256); False when there is none."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder prefix ends with ``/``)."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None:
        tmp = _scratch() / f"put-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
        try:
            tmp.write_bytes(data)
            self.put_file(key, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list(prefix)]
        self.delete(keys)
        return len(keys)


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ArtifactStoreError(f"not an artifact key: {key[:200]!r}")
    return key


def _scratch() -> Path:
    folder = get_settings().root / ".objects-tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class LocalObjects(ObjectStore):
    """Objects as files under a folder (a mounted share); written to a temp file and renamed, so whole."""

    def __init__(self, root: Path):
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def get_file(self, key: str, dest: Path) -> bool:
        try:
            shutil.copyfile(self._path(key), dest)
        except FileNotFoundError:
            return False
        return True

    def head(self, key: str) -> ObjectInfo | None:
        try:
            stat = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, stat.st_size, f"{stat.st_mtime_ns}-{stat.st_size}")

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        found = []
        for path in base.rglob("*") if base.is_dir() else []:
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.endswith(".tmp"):
                found.append(self.head(key))
        return sorted((f for f in found if f is not None), key=lambda o: o.key)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)


@contextlib.contextmanager
def _s3_errors(url: str, action: str, key: str):
    """obstore's errors (after its own retries) as an ``ArtifactStoreError`` naming the store and the key."""
    from obstore.exceptions import BaseError

    try:
        yield
    except BaseError as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ArtifactStoreError(f"the artifact store {url} failed to {action} {key}: {first}") from None


class S3Objects(ObjectStore):
    """S3-compatible object storage through obstore (Rust's object_store: multipart uploads, retries)."""

    def __init__(self, url: str):
        from obstore.store import S3Store

        parsed = urlparse(url)
        if not parsed.netloc:
            raise ArtifactStoreError(f"{url!r} names no bucket (s3://bucket/prefix)", param="artifacts_url")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        options = {"allow_http": True} if endpoint.startswith("http://") else {}
        prefix = parsed.path.strip("/") or None
        # credentials, region and endpoint come from the AWS_* variables (obstore reads them)
        self._store = S3Store(parsed.netloc, prefix=prefix, client_options=options,
                              **({"endpoint": endpoint} if endpoint else {}))
        self.url = url

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        import obstore

        digest = sha256 or sha256_file(path)
        with path.open("rb") as fh, _s3_errors(self.url, "store", key):
            obstore.put(self._store, check_key(key), fh, attributes={SHA_ATTRIBUTE: digest},
                        chunk_size=CHUNK, max_concurrency=8)

    def get_file(self, key: str, dest: Path) -> bool:
        import obstore

        try:
            with _s3_errors(self.url, "read", key):
                result = obstore.get(self._store, check_key(key))
        except FileNotFoundError:
            return False
        expected = result.attributes.get(SHA_ATTRIBUTE)
        digest = hashlib.sha256()
        with dest.open("wb") as fh, _s3_errors(self.url, "read", key):
            for chunk in result.stream(min_chunk_size=CHUNK):
                digest.update(chunk)
                fh.write(chunk)
        if expected and digest.hexdigest() != expected:
            dest.unlink(missing_ok=True)
            raise ArtifactStoreError(f"{self.url}/{key}: the downloaded bytes' sha256 is {digest.hexdigest()}, "
                                     f"the object says {expected}")
        return True

    def head(self, key: str) -> ObjectInfo | None:
        import obstore

        try:
            with _s3_errors(self.url, "look up", key):
                meta = obstore.head(self._store, check_key(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, meta["size"], meta.get("e_tag"))

    def list(self, prefix: str) -> list[ObjectInfo]:
        import obstore

        found = []
        with _s3_errors(self.url, "list", prefix or "/"):
            for batch in obstore.list(self._store, prefix=prefix or None, chunk_size=1000):
                found += [ObjectInfo(m["path"], m["size"], m.get("e_tag")) for m in batch
                          if m["path"].startswith(prefix)]
        return sorted(found, key=lambda o: o.key)

    def delete(self, keys: list[str]) -> None:
        import obstore

        for start in range(0, len(keys), 1000):
            with _s3_errors(self.url, "delete", keys[start]):
                obstore.delete(self._store, [check_key(k) for k in keys[start:start + 1000]])


def open_store(url: str) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Objects(url)
    if parsed.scheme == "file" and parsed.path:
        return LocalObjects(Path(parsed.path))
    raise ArtifactStoreError(f"TEMPERING_ARTIFACTS_URL must be s3://bucket/prefix or file:///folder, not "
                             f"{url[:200]!r}", param="artifacts_url")


_STORES: dict[str, ObjectStore] = {}
_LOCK = threading.Lock()


def shared_store() -> ObjectStore | None:
    """The store the settings name; None when the home itself is the store (TEMPERING_ARTIFACTS_URL unset)."""
    url = get_settings().artifacts_url
    if not url:
        return None
    with _LOCK:
        if url not in _STORES:
            _STORES[url] = open_store(url)
        return _STORES[url]


def home_key(path: Path) -> str:
    """The key of a path under the home."""
    try:
        return path.resolve().relative_to(get_settings().root).as_posix()
    except ValueError:
        raise ArtifactStoreError(f"{path} is not under TEMPERING_HOME") from None


# ---- writers: publish at the well-defined points ----

def publish(path: Path, sha256: str | None = None) -> None:
    """Copy one file under the home to the store (when there is one)."""
    store = shared_store()
    if store is not None and path.is_file():
        store.put_file(home_key(path), path, sha256)


def publish_folder(folder: Path, marker: str) -> None:
    """Copy a complete folder to the store: every file, then ``marker`` last; a reader trusts the folder
    only once the marker object exists. The marker's own object is replaced last when republishing."""
    store = shared_store()
    if store is None:
        return
    prefix = home_key(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != marker)
    for path in files:
        store.put_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path)
    store.put_file(f"{prefix}/{marker}", folder / marker)


def remove(path: Path, *, folder: bool) -> None:
    """Delete a file's object, or every object under a folder, from the store (when there is one)."""
    store = shared_store()
    if store is None:
        return
    key = home_key(path)
    if folder:
        store.delete_prefix(key + "/")
    else:
        store.delete([key])


# ---- readers: pull what this home misses ----

def pull(path: Path) -> bool:
    """Make sure a file under the home is here, downloading it when the store has it; whether it is here."""
    store = shared_store()
    if path.is_file():
        if store is not None:
            _touch(path)  # recently used: the cache evicts it last
        return True
    if store is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.pull")
    try:
        if not store.get_file(home_key(path), tmp):
            return False
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    trim_cache(keep=path)
    return True


def pull_folder(folder: Path, marker: str) -> bool:
    """Make sure a complete folder is here: local with its marker, or downloaded whole from the store once
    the store holds its marker (files into a temp folder, renamed into place). Whether it is here."""
    store = shared_store()
    if (folder / marker).is_file():
        if store is not None:
            _touch(folder)
        return True
    if store is None:
        return False
    prefix = home_key(folder) + "/"
    objects = store.list(prefix)
    if not any(o.key == prefix + marker for o in objects):
        return False
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}.pull")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for info in sorted(objects, key=lambda o: o.key.endswith("/" + marker)):  # the marker last
            dest = tmp / info.key[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not store.get_file(info.key, dest):
                raise ArtifactStoreError(f"{store.url}/{info.key} disappeared while it was being read")
        if folder.exists() and not (folder / marker).is_file():
            shutil.rmtree(folder)  # a local leftover without its marker: never trusted
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / marker).is_file():  # not another process's pull that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    trim_cache(keep=folder)
    return True


def remote_markers(prefix: Path, marker: str) -> list[str]:
    """Names of the folders directly under ``prefix`` whose marker the store holds (e.g. checkpoints); the
    marker may be a path inside them (``model/tempering.json``)."""
    store = shared_store()
    if store is None:
        return []
    base = home_key(prefix) + "/"
    names = []
    for info in store.list(base):
        parts = info.key[len(base):].split("/", 1)
        if len(parts) == 2 and parts[1] == marker:
            names.append(parts[0])
    return sorted(names)


def fetch_bytes(path: Path) -> bytes | None:
    """A small file's bytes: from the home, or read from the store without caching it; None if neither has it."""
    if path.is_file():
        return path.read_bytes()
    store = shared_store()
    if store is None:
        return None
    tmp = _scratch() / f"fetch-{os.getpid()}-{threading.get_ident()}"
    try:
        return tmp.read_bytes() if store.get_file(home_key(path), tmp) else None
    finally:
        tmp.unlink(missing_ok=True)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


# ---- the cache: bounded, least recently used first ----

def _cache_units(root: Path) -> list[tuple[Path, str | None]]:
    """What may be evicted, with the marker whose object proves the store holds it whole: uploaded files,
    final models and checkpoints (each pulled or published whole)."""
    units = [(p, None) for p in (root / "artifacts" / "files").glob("file-*")]
    units += [(p, "tempering.json") for p in (root / "runs").glob("*/model")]
    units += [(p, "COMPLETE") for p in (root / "runs").glob("*/checkpoints/step-*")]
    return units


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def trim_cache(keep: Path | None = None) -> list[Path]:
    """Evict the least recently used pulled or published artifacts until the cache is within its bound;
    only what the store holds is evicted (a missing piece is pulled again when next needed)."""
    settings, store = get_settings(), shared_store()
    if store is None:
        return []
    units = [(u.stat().st_mtime, u, m, _size(u)) for u, m in _cache_units(settings.root) if u.exists()]
    total = sum(size for *_, size in units)
    evicted = []
    for _, unit, marker, size in sorted(units, key=lambda u: u[0]):
        if total <= settings.artifacts_cache_bytes:
            break
        if keep is not None and unit.resolve() == keep.resolve():
            continue
        key = home_key(unit)
        if store.head(f"{key}/{marker}" if marker else key) is None:  # not (yet) whole in the store
            continue
        if unit.is_file():
            unit.unlink(missing_ok=True)
        else:
            shutil.rmtree(unit, ignore_errors=True)
        evicted.append(unit)
        total -= size
    return evicted
