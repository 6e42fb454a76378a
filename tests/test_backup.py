"""``tempering backup`` / ``restore`` with the home as the artifact store (the embedded default): the SQLite
database through the backup API and the home's artifacts in a tar, never base model weights; restoring refuses
a non-empty home without --force and a tar that would write outside the home. The same over a shared bucket
(a manifest checked before restoring) is in ``test_s3store``."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest
from postgres_fixture import postgres_server_fixture, postgres_url_fixture  # noqa: F401  (the fixtures)
from sqlalchemy import select

from tempering.errors import InvalidConfigError, TemperingError
from tempering.settings import get_settings, reset_settings
from tempering.store.backup import backup, restore
from tempering.store.db import Database
from tempering.store.models import Project


def _platform(home):
    settings = get_settings()
    db = Database(settings.database)
    db.migrate()
    with db.session() as session:
        session.add(Project(id="proj-backup", name="kept"))
    db.dispose()
    (home / "artifacts" / "files").mkdir(parents=True)
    (home / "artifacts" / "files" / "file-abc").write_bytes(b'{"messages": []}\n')
    (home / "artifacts" / "files" / ".file-x.123.tmp").write_bytes(b"half")  # an unfinished write: not kept
    model = home / "runs" / "r1" / "model"
    model.mkdir(parents=True)
    (model / "tempering.json").write_text('{"id": "ft:x::r1"}')
    (home / "models" / "base").mkdir(parents=True)
    (home / "models" / "base" / "model.safetensors").write_bytes(b"weights")  # base weights stay local
    (home / "server.key").write_text("secret\n")
    return settings


def _project_name(settings) -> str:
    db = Database(settings.database)
    try:
        with db.session(write=False) as session:
            return session.scalars(select(Project.name).where(Project.id == "proj-backup")).one()
    finally:
        db.dispose()


def test_backup_and_restore_of_a_home(tempering_home, tmp_path):
    settings = _platform(tempering_home)
    out = tmp_path / "backup"
    summary = backup(settings, out)
    assert summary["database"] == "sqlite" and summary["artifacts"] == "home" and summary["schema_revision"]
    with pytest.raises(InvalidConfigError, match="not an empty folder"):
        backup(settings, out)

    shutil.rmtree(tempering_home)
    tempering_home.mkdir()
    (tempering_home / "leftover").write_text("x")
    with pytest.raises(InvalidConfigError, match="--force"):
        restore(settings, out)
    restore(settings, out, force=True)

    assert (tempering_home / "artifacts" / "files" / "file-abc").read_bytes() == b'{"messages": []}\n'
    assert (tempering_home / "runs" / "r1" / "model" / "tempering.json").is_file()
    assert (tempering_home / "server.key").read_text() == "secret\n"
    assert not (tempering_home / "models").exists()
    assert not (tempering_home / "artifacts" / "files" / ".file-x.123.tmp").exists()
    assert _project_name(settings) == "kept"


def test_restore_refuses_a_tar_that_writes_outside_the_home_and_a_foreign_folder(tempering_home, tmp_path):
    settings = _platform(tempering_home)
    out = tmp_path / "backup"
    backup(settings, out)
    with tarfile.open(out / "home.tar", "a") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"no"))
    shutil.rmtree(tempering_home)
    with pytest.raises(tarfile.OutsideDestinationError):
        restore(settings, out)
    assert not (tempering_home.parent / "escaped").exists()
    assert not (tempering_home / "tempering.db").exists()  # refused before anything was restored

    (out / "backup.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(TemperingError, match="not a tempering-backup"):
        restore(settings, out)


def test_backup_and_restore_through_postgresql(postgres_server, postgres_url, tempering_home, tmp_path, monkeypatch):
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump/pg_restore are not installed (postgresql-client)")
    monkeypatch.setenv("TEMPERING_DATABASE_URL", postgres_url)
    reset_settings()
    summary = backup(_platform(tempering_home), tmp_path / "backup")
    assert summary["database"] == "postgresql" and (tmp_path / "backup" / "database.pgdump").stat().st_size > 0

    name = "t_restored_" + tmp_path.name[-12:].replace("-", "_").lower()
    with postgres_server.admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        monkeypatch.setenv("TEMPERING_DATABASE_URL", postgres_server.url(name))
        monkeypatch.setenv("TEMPERING_HOME", str(tmp_path / "new-home"))
        reset_settings()
        restore(get_settings(), tmp_path / "backup")
        assert _project_name(get_settings()) == "kept"
        assert (tmp_path / "new-home" / "runs" / "r1" / "model" / "tempering.json").is_file()
        shutil.rmtree(tmp_path / "new-home")
        with pytest.raises(InvalidConfigError, match="PostgreSQL database's tables"):  # it holds a platform now
            restore(get_settings(), tmp_path / "backup")
    finally:
        with postgres_server.admin_connection() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
