"""Backup and restore of a whole platform: the database and the artifacts, consistent with each other.

A backup is a folder::

    backup.json        what it holds: format, time, database kind, schema revision, artifact store, counts
    database.sqlite    SQLite, copied through sqlite3's online backup API (consistent while servers run)
    database.pgdump    PostgreSQL, ``pg_dump --format=custom`` (restored with ``pg_restore``)
    home.tar           the home's own files: server.key, catalog.json, calibration.json and, with the home as
                       the artifact store, every artifact (artifacts/files, runs/); never base model weights
    manifest.json      with a shared artifact store: every object's key, size and etag under the prefix

The database is copied first, the artifacts second. Artifacts are always written (and published) before the
rows that name them and removed after, so every row of the copy names artifacts the copy holds; only a
deletion racing the backup can leave a row without its artifact (stop writers for a clean cut). Restoring
refuses a non-empty home or database unless forced, and with a shared store checks first that the bucket
still holds every object of the manifest, unchanged. Knows nothing of HTTP; the CLI prints.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import time
from pathlib import Path

from sqlalchemy import inspect, make_url, text

from tempering.errors import InvalidConfigError, TemperingError
from tempering.settings import Settings
from tempering.store import objects
from tempering.store.db import make_engine

FORMAT, VERSION = "tempering-backup", 1
HOME_FILES = ("server.key", "catalog.json", "calibration.json")
ARTIFACT_FOLDERS = ("artifacts/files", "runs")


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    return Path(parsed.database).expanduser() if parsed.get_backend_name() == "sqlite" else None


def _pg(url: str) -> tuple[str, dict]:
    """A libpq URL without the password, and the environment carrying it (never on a command line)."""
    parsed = make_url(url)
    env = {**os.environ, **({"PGPASSWORD": parsed.password} if parsed.password else {})}
    return parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


def _run(command: list[str], env: dict) -> None:
    binary = shutil.which(command[0])
    if binary is None:
        raise TemperingError(f"{command[0]} is not installed; it backs up and restores PostgreSQL databases "
                             "(the postgresql-client package)", code="backup_failed")
    done = subprocess.run([binary, *command[1:]], env=env, capture_output=True, text=True, check=False)  # noqa: S603 - our own arguments
    if done.returncode != 0:
        raise TemperingError(f"{command[0]} failed: {done.stderr.strip()[-1000:]}", code="backup_failed")


def _revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def _copy_sqlite(source: Path, target: Path) -> None:
    """Copy a SQLite database through sqlite3's online backup API (consistent while servers write to it)."""
    source_db, target_db = sqlite3.connect(source), sqlite3.connect(target)
    try:
        with target_db:
            source_db.backup(target_db)
    finally:
        source_db.close()
        target_db.close()


def _tar_home(root: Path, out: Path, with_artifacts: bool) -> int:
    count = 0
    with tarfile.open(out, "w") as tar:
        for name in HOME_FILES:
            if (root / name).is_file():
                tar.add(root / name, arcname=name)
                count += 1
        for folder in ARTIFACT_FOLDERS if with_artifacts else ():
            for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else []:
                if path.is_file() and not path.name.startswith("."):  # temp files of unfinished writes
                    tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
                    count += 1
    return count


def backup(settings: Settings, out: Path) -> dict:
    """Write a backup of the database and the artifacts into the new (or empty) folder ``out``."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidConfigError(f"{out} exists and is not an empty folder; back up into a new one", param="out")
    out.mkdir(parents=True, exist_ok=True)
    url, store = settings.database, objects.shared_store()
    summary = {"format": FORMAT, "version": VERSION, "created_at": int(time.time()),
               "schema_revision": _revision(url), "artifacts": store.url if store else "home"}
    sqlite = _sqlite_path(url)
    if sqlite is not None:  # first the database …
        _copy_sqlite(sqlite, out / "database.sqlite")
        summary["database"] = "sqlite"
    else:
        libpq, env = _pg(url)
        _run(["pg_dump", "--format=custom", "--no-owner", f"--file={out / 'database.pgdump'}", libpq], env)
        summary["database"] = "postgresql"
    if store is not None:  # … then the artifacts it names
        listed = store.list("")
        (out / "manifest.json").write_text(json.dumps(
            {"url": store.url, "objects": [[o.key, o.size, o.etag] for o in listed]}, indent=0) + "\n")
        summary["objects"] = len(listed)
    summary["home_files"] = _tar_home(settings.root, out / "home.tar", with_artifacts=store is None)
    (out / "backup.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _read_summary(source: Path) -> dict:
    try:
        summary = json.loads((source / "backup.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidConfigError(f"{source} is not a Tempering backup (backup.json: {exc})", param="in") from None
    if (summary.get("format"), summary.get("version")) != (FORMAT, VERSION):
        raise InvalidConfigError(f"{source / 'backup.json'} is not a {FORMAT} of version {VERSION}", param="in")
    return summary


def check_manifest(source: Path) -> int:
    """Every object the backup names is still in the shared store, unchanged; the number checked."""
    store = objects.shared_store()
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    if store is None:
        raise InvalidConfigError(f"the backup's artifacts are in {manifest['url']}; set TEMPERING_ARTIFACTS_URL "
                                 "to it before restoring", param="artifacts_url")
    present = {o.key: (o.size, o.etag) for o in store.list("")}
    missing = [key for key, size, etag in manifest["objects"] if present.get(key) != (size, etag)]
    if missing:
        raise TemperingError(f"{store.url} no longer holds {len(missing)} of the backup's "
                             f"{len(manifest['objects'])} objects as they were (first: {', '.join(missing[:5])}); "
                             "restore the bucket from its own backup or versioning first", code="backup_mismatch")
    return len(manifest["objects"])


def _refuse_non_empty(settings: Settings, force: bool) -> None:
    root, sqlite = settings.root, _sqlite_path(settings.database)
    held = [p.name for p in root.iterdir()] if root.is_dir() else []
    if sqlite is not None and sqlite.exists():
        held.append(str(sqlite))
    elif sqlite is None and _revision(settings.database) is not None:
        held.append("the PostgreSQL database's tables")
    if held and not force:
        raise InvalidConfigError(f"the home {root} (or its database) is not empty ({', '.join(sorted(held)[:5])}); "
                                 "restore into an empty one, or pass --force to replace it", param="force")


def restore(settings: Settings, source: Path, *, force: bool = False) -> dict:
    """Restore a backup into this home and database (both empty unless ``force``)."""
    summary = _read_summary(source)
    if (source / "manifest.json").is_file():
        summary["objects_checked"] = check_manifest(source)  # before anything here changes
    _refuse_non_empty(settings, force)
    root = settings.root
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(source / "home.tar") as tar:  # every member checked before anything is written
        for member in tar.getmembers():
            tarfile.data_filter(member, str(root))  # refuses absolute paths, '..' and links out of the home
    sqlite = _sqlite_path(settings.database)
    if summary["database"] == "sqlite":
        if sqlite is None:
            raise InvalidConfigError("the backup holds a SQLite database and TEMPERING_DATABASE_URL names "
                                     "PostgreSQL; restore with the URL unset or pointing at a SQLite file",
                                     param="database_url")
        tmp = sqlite.with_name(f".{sqlite.name}.restore")
        tmp.unlink(missing_ok=True)
        _copy_sqlite(source / "database.sqlite", tmp)
        for suffix in ("-wal", "-shm"):
            sqlite.with_name(sqlite.name + suffix).unlink(missing_ok=True)
        os.replace(tmp, sqlite)
    else:
        if sqlite is not None:
            raise InvalidConfigError("the backup holds a PostgreSQL dump; set TEMPERING_DATABASE_URL to an "
                                     "empty PostgreSQL database to restore it", param="database_url")
        libpq, env = _pg(settings.database)
        _run(["pg_restore", "--clean", "--if-exists", "--no-owner", f"--dbname={libpq}",
              str(source / "database.pgdump")], env)
    with tarfile.open(source / "home.tar") as tar:
        tar.extractall(root, filter="data")
    return summary
