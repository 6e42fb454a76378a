"""Migration 0006 on a database made by the previous schema (revision 0005): the project, its key, files, jobs
and models are kept; the old key belongs to the admin, who is hub admin of a default hub holding the project."""

from __future__ import annotations

import hashlib

from sqlalchemy import text


def _database_at_0005(url: str) -> dict:
    """A database as the previous main left it: one project, its admin key, a file and a finished job."""
    from alembic import command
    from alembic.config import Config

    from tempering.store.db import MIGRATIONS, make_engine

    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    key = "tk-old-admin-key-0123456789"
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
        connection.execute(text("INSERT INTO projects (id, name, created_at) VALUES ('proj_old', 'default', 1)"))
        connection.execute(text(
            "INSERT INTO api_keys (id, project_id, name, prefix, key_hash, role, created_at, revoked) "
            "VALUES ('key_old', 'proj_old', 'admin', :prefix, :hash, 'owner', 1, false)"),
            {"prefix": key[:10], "hash": hashlib.sha256(key.encode()).hexdigest()})
        connection.execute(text(
            "INSERT INTO files (id, project_id, filename, purpose, bytes, sha256, status, created_at, deleted) "
            "VALUES ('file-old', 'proj_old', 'train.jsonl', 'fine-tune', 2, :sha, 'processed', 1, false)"),
            {"sha": "0" * 64})
        connection.execute(text(
            "INSERT INTO jobs (id, project_id, model, training_file, seed, config, hyperparameters, status, "
            "priority, result_files, created_at, attempts, fine_tuned_model, trained_tokens) VALUES ('ftjob-old', "
            "'proj_old', 'tiny-llama', 'file-old', 1, '{}', '{}', 'succeeded', 0, '[]', 1, 0, "
            "'ft:tiny-llama:old:abc', 1234)"))
    engine.dispose()
    return {"key": key}


def test_the_old_database_keeps_its_project_key_files_jobs_and_models(tmp_path, capfd):
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.settings import Settings

    settings = Settings(home=tmp_path / "home")
    old = _database_at_0005(settings.database)
    app = create_app(settings, workers=0)
    printed = capfd.readouterr().err
    assert "password" in printed and "API key" not in printed  # the admin gets a password; no new key
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {old['key']}"}
    me = client.get("/v1/me", headers=headers).json()
    assert me["project_id"] == "proj_old" and me["role"] == "owner"
    assert me["user"]["username"] == "admin" and me["user"]["is_admin"]
    assert [p["project"]["id"] for p in me["projects"]] == ["proj_old"]
    assert [f["id"] for f in client.get("/v1/files", headers=headers).json()["data"]] == ["file-old"]
    job = client.get("/v1/fine_tuning/jobs/ftjob-old", headers=headers).json()
    assert job["fine_tuned_model"] == "ft:tiny-llama:old:abc" and job["trained_tokens"] == 1234
    hubs = client.get("/v1/organization/hubs", headers=headers).json()["data"]
    assert [h["name"] for h in hubs] == ["default"]
    assert client.get(f"/v1/organization/hubs/{hubs[0]['id']}", headers=headers).status_code == 200  # hub admin
    keys = client.get("/v1/organization/projects/proj_old/api_keys", headers=headers).json()["data"]
    assert [(k["id"], k["owner"]["name"]) for k in keys] == [("key_old", "admin")]
    # the printed password signs the admin in
    from tempering.services import accounts

    password = printed.rsplit(":", 1)[1].split()[0]
    with app.state.db.session() as session:
        assert accounts.sign_in(session, accounts.SignInThrottle(), "admin", password).is_admin
    # a second start prints nothing and creates nothing
    create_app(settings, workers=0)
    assert "password" not in capfd.readouterr().err
