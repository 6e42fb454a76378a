"""Deleting a project: refused while its deployments serve (unless forced); its files' bytes, runs and
deployments go, its unfinished jobs are cancelled, its audit log stays, its keys get 401 and it is 404."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from sqlalchemy import select

BASE = "smollm2-135m-instruct"
ROWS = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def _setup():
    """The app, the admin's client, a second project with an Owner key of its own, and its files, jobs, runs
    and a deployment."""
    from tempering.api.app import create_app
    from tempering.settings import get_settings
    from tempering.store.models import Job

    app = create_app(get_settings(), workers=0)
    admin = TestClient(app, headers={"Authorization": f"Bearer {app.state.initial_api_key}"})
    project = admin.post("/v1/organization/projects", json={"name": "doomed"}).json()
    base = f"/v1/organization/projects/{project['id']}"
    key = admin.post(f"{base}/api_keys", json={"name": "mine"}).json()["value"]
    account_key = admin.post(f"{base}/service_accounts", json={"name": "bot"}).json()["api_key"]["value"]
    owner = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    file_id = owner.post("/v1/files", files={"file": ("t.jsonl", ROWS * 10)}, data={"purpose": "fine-tune"}).json()["id"]
    kept_file = admin.post("/v1/files", files={"file": ("k.jsonl", ROWS * 10)}, data={"purpose": "fine-tune"}).json()["id"]
    deployment = owner.post("/v1/deployments", json={"model": BASE, "name": "live"}).json()
    runs = app.state.settings.runs_dir
    with app.state.db.session() as session:
        for job_id, status, worker in (("ftjob-delqueued", "queued", None), ("ftjob-delrunning", "running", "w1"),
                                       ("ftjob-deldone", "succeeded", None)):
            session.add(Job(id=job_id, project_id=project["id"], model=BASE, training_file=file_id, seed=1,
                            config={}, status=status, worker_id=worker))
            (runs / job_id.removeprefix("ftjob-")).mkdir(parents=True, exist_ok=True)
            (runs / job_id.removeprefix("ftjob-") / "run.json").write_text("{}")
    return app, admin, owner, project, base, file_id, kept_file, deployment, account_key


def _served(app, deployment_id: str, seconds_ago: float) -> None:
    from tempering.store.models import DeploymentRequest

    with app.state.db.session() as session:
        session.add(DeploymentRequest(deployment_id=deployment_id, created_at=time.time() - seconds_ago,
                                      endpoint="chat.completions", status=200, latency_ms=5.0))


def test_deletion_is_refused_while_serving_and_forced_removes_everything_but_the_audit_log():
    from tempering.store.models import AuditEvent, Deployment, File, Job, Project

    app, admin, owner, project, base, file_id, kept_file, deployment, account_key = _setup()
    store, runs = app.state.store, app.state.settings.runs_dir
    assert store.file_path(file_id).exists()
    _served(app, deployment["id"], seconds_ago=60)
    refused = owner.delete(base)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "project_in_use" and "live" in refused.json()["error"]["message"]
    assert owner.get("/v1/files").json()["data"]  # nothing was touched

    forced = owner.delete(base, params={"force": "true"})
    assert forced.status_code == 200, forced.text
    assert forced.json()["removed"] == {"webhooks": 0, "deployments": 1, "jobs_cancelled": 2,
                                        "evaluations_cancelled": 0, "runs": 3, "files": 1}
    assert not store.file_path(file_id).exists()
    assert not any((runs / r).exists() for r in ("delqueued", "delrunning", "deldone"))
    assert store.file_path(kept_file).exists()  # another project's file stays
    with app.state.db.session(write=False) as session:
        gone = session.get(Project, project["id"])
        assert gone.status == "deleted" and gone.deleted_at is not None
        assert session.get(File, file_id).deleted
        assert session.get(Deployment, deployment["id"]).deleted_at is not None
        assert session.get(Job, "ftjob-delqueued").status == "cancelled"
        assert session.get(Job, "ftjob-delrunning").stop_requested == "cancel"  # its runner stops at the next step
        assert session.get(Job, "ftjob-deldone").fine_tuned_model is None
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.project_id == project["id"])).all()
        assert "project.created" in actions and "project.deleted" in actions  # the audit log is kept
        entry = session.scalars(select(AuditEvent).where(AuditEvent.action == "project.deleted")).one()
        assert entry.details["forced"] is True and entry.target == project["id"]

    for key_client in (owner, TestClient(app, headers={"Authorization": f"Bearer {account_key}"})):
        response = key_client.get("/v1/files")
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert admin.get(base).status_code == 404
    assert admin.delete(base).status_code == 404
    assert project["id"] not in [p["id"] for p in admin.get("/v1/organization/projects").json()["data"]]
    assert admin.get(f"/v1/files/{kept_file}").status_code == 200


def test_a_project_idle_for_15_minutes_is_deleted_without_force_and_only_by_an_owner():
    app, admin, owner, _project, base, *_, deployment, _account = _setup()
    _served(app, deployment["id"], seconds_ago=16 * 60)
    reader_key = admin.post(f"{base}/service_accounts", json={"name": "r", "role": "reader"}).json()["api_key"]
    reader = TestClient(app, headers={"Authorization": f"Bearer {reader_key['value']}"})
    assert reader.delete(base).status_code == 403
    hooks = owner.post(f"{base}/webhooks", json={"url": "https://93.184.215.14/h", "events": ["deployment.deleted"]})
    assert hooks.status_code == 200
    from tempering.store.models import Sweep

    with app.state.db.session() as session:  # a running sweep: its trials are the jobs cancelled below
        sweep = Sweep(project_id=_project["id"], model=BASE, training_file="file-x", seed=1, config={},
                      search_space=[], objective={}, pruning={}, n_trials=3, status="running")
        session.add(sweep)
        session.flush()
        sweep_id = sweep.id
    deleted = owner.delete(base)
    assert deleted.status_code == 200, deleted.text
    with app.state.db.session(write=False) as session:  # no driver advances it again
        assert session.get(Sweep, sweep_id).status == "cancelled"
    assert deleted.json()["removed"]["webhooks"] == 1 and deleted.json()["removed"]["deployments"] == 1
    from tempering.store.models import WebhookDelivery

    with app.state.db.session(write=False) as session:  # a project that is going sends no events
        assert session.scalars(select(WebhookDelivery)).all() == []
