"""Server time of the portal's pages: the median and the slowest of N loads of each page, measured in process
through FastAPI's TestClient (the app's whole stack: the request guard, the permission dependency reading the
session cookie, the services, Jinja2), on a fresh home with a project holding files, a job with 300 events and
10 checkpoints, and deployments. No worker, no model loads.

    .venv/bin/python bench/portal_pages.py            # 20 loads of each page
    .venv/bin/python bench/portal_pages.py --loads 50
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20)
    args = parser.parse_args()
    os.environ["TEMPERING_HOME"] = tempfile.mkdtemp(prefix="portal-bench-") + "/home"

    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.settings import get_settings

    app = create_app(get_settings(), workers=0)
    client = TestClient(app)
    key = {"Authorization": f"Bearer {app.state.initial_api_key}"}
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"A{i}"}]}
            for i in range(200)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    file_ids = [client.post("/v1/files", headers=key, files={"file": (f"f{i}.jsonl", data)},
                            data={"purpose": "fine-tune"}).json()["id"] for i in range(10)]
    job_id = _job_with_events(app, file_ids[0])
    for i in range(5):
        made = client.post("/v1/deployments", headers=key, json={"model": "smollm2-135m-instruct", "name": f"d{i}",
                                                                 "content_filter": False})
        assert made.status_code == 200, made.text
    page = client.post("/signin", data={"username": "admin", "password": app.state.initial_admin_password})
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    pages = {"catalog": ("GET", "/catalog", None), "catalog search (htmx fragment)":
             ("GET", "/catalog?q=phi-3", {"HX-Request": "true", "HX-Target": "cards"}),
             "data files": ("GET", "/data", None), "data file report": ("GET", f"/data/{file_ids[0]}", None),
             "jobs": ("GET", "/jobs", None), "job (300 events)": ("GET", f"/jobs/{job_id}", None),
             "models": ("GET", "/models", None), "deployments": ("GET", "/deployments", None),
             "playground": ("GET", "/playground", None), "members & keys": ("GET", "/members", None),
             "wizard: validation step": ("POST", "/fine-tune", None)}
    print(f"{'page':34} {'median ms':>10} {'max ms':>8}")
    for name, (method, url, headers) in pages.items():
        times = []
        for _ in range(args.loads):
            began = time.perf_counter()
            if method == "GET":
                response = client.get(url, headers=headers)
            else:
                response = client.post(url, data={"csrf_token": csrf, "step": "data", "go": "next",
                                                  "model": "smollm2-135m-instruct", "training_file": file_ids[0]})
            times.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, (name, response.status_code)
        print(f"{name:34} {statistics.median(times):10.1f} {max(times):8.1f}")


def _job_with_events(app, file_id: str) -> str:
    from tempering.store.models import Job, JobCheckpoint, JobEvent, Project

    with app.state.db.session() as s:
        project = s.query(Project).first()
        job = Job(project_id=project.id, model="smollm2-135m-instruct", training_file=file_id, seed=0, config={},
                  status="running")
        s.add(job)
        s.flush()
        for step in range(1, 301):
            s.add(JobEvent(job_id=job.id, level="info", type="metrics", message=f"Step {step}/300",
                           data={"step": step, "train_loss": 3.0 - step / 200}))
        for step in range(30, 301, 30):
            s.add(JobCheckpoint(job_id=job.id, step_number=step, metrics={},
                                fine_tuned_model_checkpoint=f"ft:x:ckpt-step-{step}"))
        return job.id


if __name__ == "__main__":
    main()
