"""Tempering's own tool routes, in-process: a file's report, conversion and split, a job's estimate, the
catalog and exports. Each: the happy path, a refusal naming the parameter, and another project's ids answered
404 exactly as the files API answers them."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from conftest import TINY_ID, chat_example

COLORS = ["red", "green", "blue", "yellow", "purple"]


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


QA = _jsonl([chat_example(f"What color is item {i}?", f"Item {i} is {COLORS[i % 5]}.") for i in range(20)])
INTENTS = ("text,label\n" + "".join(f"message number {i} about my {topic},{topic}\n"
                                    for i in range(30) for topic in [("card", "refund", "transfer")[i % 3]])).encode()


@pytest.fixture
def api(tempering_home, tiny_model):
    """The app without workers, the admin key, and a second project's key."""
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.services.projects import project_key
    from tempering.settings import get_settings
    from tempering.store.models import Project

    app = create_app(get_settings(), workers=0)
    client = TestClient(app)
    with app.state.db.session() as session:
        other = Project(name="other")
        session.add(other)
        session.flush()
        theirs = {"Authorization": f"Bearer {project_key(session, other.id, 'other')}"}
    return client, {"Authorization": f"Bearer {app.state.initial_api_key}"}, theirs


def _upload(client, headers, name: str, data: bytes) -> str:
    response = client.post("/v1/files", headers=headers, files={"file": (name, data)}, data={"purpose": "fine-tune"})
    if response.status_code == 200:
        return response.json()["id"]
    return next(f["id"] for f in client.get("/v1/files", headers=headers).json()["data"] if f["filename"] == name)


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _not_found(response, ident: str, param: str) -> None:
    assert _error(response, 404) == {"message": f"No such file: '{ident}'", "type": "invalid_request_error",
                                     "param": param, "code": "not_found"}


# ---------------------------------------------------------------- report


def test_report_counts_tokens_and_checks_leakage(api):
    client, mine, _ = api
    train = _upload(client, mine, "qa.jsonl", QA)
    valid = _upload(client, mine, "valid.jsonl", _jsonl([chat_example("What color is item 3?", "Item 3 is yellow.")]
                                                         + [chat_example(f"Q{i}?", f"A{i}.") for i in range(12)]))
    response = client.post(f"/v1/files/{train}/report", headers=mine,
                           json={"model": TINY_ID, "validation_file": valid})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["object"] == "file.report" and report["train_file"] == train
    assert report["validation_file"] == valid and report["model"] == TINY_ID
    assert report["counts"]["examples"] == 20 and report["counts"]["validation_examples"] == 13
    assert report["counts"]["tokens_per_example"]["min"] > 0
    leaks = report["duplicates"]
    assert sum(len(leaks[k]) for k in ("leaked_exact", "leaked_near", "leaked_prompts")) == 1  # item 3, both sides
    assert report["verdict"]["status"] in ("ready", "review", "blocked") and report["verdict"]["advice"]

    without = client.post(f"/v1/files/{train}/report", headers=mine, json={}).json()
    assert without["model"] is None and without["counts"]["tokens_per_example"] is None


def test_report_explains_an_invalid_upload_and_refuses_unknowns(api):
    client, mine, theirs = api
    bad = _upload(client, mine, "bad.jsonl", QA + b"{not json}\n")  # kept with status "error"
    report = client.post(f"/v1/files/{bad}/report", headers=mine, json={}).json()
    assert report["verdict"]["status"] == "blocked"
    assert any(21 in f["lines"] for f in report["findings"] if f["level"] == "error")
    assert str(bad) not in json.dumps(report["findings"])  # no server path, no id in messages
    assert _error(client.post(f"/v1/files/{bad}/report", headers=mine, json={"model": "no-such-model"}),
                  404)["param"] == "model"
    assert _error(client.post(f"/v1/files/{bad}/report", headers=mine, json={"format": "csv"}), 400)["param"] == \
        "format"
    _not_found(client.post(f"/v1/files/{bad}/report", headers=theirs, json={}), bad, "file_id")
    _not_found(client.post(f"/v1/files/{bad}/report", headers=mine, json={"validation_file": "file-nothere"}),
               "file-nothere", "validation_file")


# ---------------------------------------------------------------- convert


def test_convert_stores_canonical_chat_jsonl_as_a_new_file(api):
    client, mine, theirs = api
    source = _upload(client, mine, "intents.csv", INTENTS)
    response = client.post(f"/v1/files/{source}/convert", headers=mine, json={})
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["object"] == "file.conversion" and done["format"] == "classification"
    assert done["examples"] == 30 and done["skipped"] == 0 and done["issues"] == []
    new = done["file"]
    assert new["filename"] == "intents.chat.jsonl" and new["status"] == "processed" and new["purpose"] == "fine-tune"
    lines = client.get(f"/v1/files/{new['id']}/content", headers=mine).content.decode().splitlines()
    assert len(lines) == 30 and json.loads(lines[0])["messages"][-1] == {"role": "assistant", "content": "card"}
    assert new["id"] in {f["id"] for f in client.get("/v1/files", headers=mine).json()["data"]}

    rows = client.post(f"/v1/files/{new['id']}/convert", headers=mine, json={"to": "classification"}).json()
    text = client.get(f"/v1/files/{rows['file']['id']}/content", headers=mine).content.decode()
    assert json.loads(text.splitlines()[0]) == {"text": "message number 0 about my card", "label": "card"}
    _not_found(client.post(f"/v1/files/{source}/convert", headers=theirs, json={}), source, "file_id")


def test_convert_refuses_bad_lines_unless_skipped(api):
    client, mine, _ = api
    before = len(client.get("/v1/files", headers=mine).json()["data"])
    bad = _upload(client, mine, "bad.jsonl", QA + b'{"prompt": "half"}\n')
    error = _error(client.post(f"/v1/files/{bad}/convert", headers=mine, json={}), 400)
    assert error["code"] == "invalid_file" and "line 21" in error["message"] and "skip_invalid" in error["message"]
    assert len(client.get("/v1/files", headers=mine).json()["data"]) == before + 1  # no file was added
    done = client.post(f"/v1/files/{bad}/convert", headers=mine, json={"skip_invalid": True}).json()
    assert done["skipped"] == 1 and done["issues"][0]["line"] == 21 and done["file"]["status"] == "processed"
    error = _error(client.post(f"/v1/files/{bad}/convert", headers=mine, json={"to": "csv"}), 400)
    assert error["param"] == "to"
    turns = _upload(client, mine, "turns.jsonl", _jsonl([{"messages": [
        {"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]} for i in range(10)]))
    error = _error(client.post(f"/v1/files/{turns}/convert", headers=mine, json={"to": "classification"}), 400)
    assert error["param"] == "to" and "single-turn" in error["message"]
    assert len(client.get("/v1/files", headers=mine).json()["data"]) == before + 3  # two uploads, one conversion


def test_no_stored_bytes_without_their_row(api):
    """Registering the new file fails (the database refuses the write): the converted bytes are removed."""
    from contextlib import contextmanager

    from tempering.services import datasets
    from tempering.store.models import File

    client, mine, _ = api
    source = _upload(client, mine, "intents.csv", INTENTS)
    state = client.app.state
    stored = lambda: sorted(p.name for p in (state.store.root / "files").iterdir())
    before = stored()

    class RefusingWrites:
        @contextmanager
        def session(self, *, write: bool = True):
            if write:
                raise RuntimeError("database is locked")
            with state.db.session(write=False) as session:
                yield session

    with state.db.session(write=False) as session:
        project_id = session.get(File, source).project_id
    with pytest.raises(RuntimeError):
        datasets.convert(RefusingWrites(), project_id, state.store, source)
    assert stored() == before and not list(state.store.root.glob(".work-*"))


# ---------------------------------------------------------------- split


def test_split_is_seeded_stratified_and_stored(api):
    client, mine, theirs = api
    source = _upload(client, mine, "intents.csv", INTENTS)
    body = {"validation_fraction": 0.2, "seed": 7}
    response = client.post(f"/v1/files/{source}/split", headers=mine, json=body)
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["object"] == "file.split" and done["stratified"] is True
    assert done["by_label"] == {label: {"train": 8, "validation": 2} for label in ("card", "refund", "transfer")}
    train, valid = done["training_file"], done["validation_file"]
    assert (train["filename"], valid["filename"]) == ("intents.train.jsonl", "intents.validation.jsonl")
    assert train["status"] == valid["status"] == "processed"
    content = lambda f: client.get(f"/v1/files/{f['id']}/content", headers=mine).content
    assert len(content(train).splitlines()) == 24 and len(content(valid).splitlines()) == 6
    again = client.post(f"/v1/files/{source}/split", headers=mine, json=body).json()
    assert content(again["validation_file"]) == content(valid)  # the same seed, the same split

    assert _error(client.post(f"/v1/files/{source}/split", headers=mine, json={"validation_fraction": 1.5}),
                  400)["param"] == "validation_fraction"
    _not_found(client.post(f"/v1/files/{source}/split", headers=theirs, json={}), source, "file_id")


# ---------------------------------------------------------------- estimate


def test_estimate_takes_the_job_body(api):
    client, mine, theirs = api
    train = _upload(client, mine, "qa.jsonl", QA)
    body = {"model": TINY_ID, "training_file": train, "seed": 1,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}
    response = client.post("/v1/fine_tuning/estimates", headers=mine, json=body)
    assert response.status_code == 200, response.text
    estimate = response.json()
    assert estimate["object"] == "fine_tuning.estimate" and estimate["base_model"] == TINY_ID
    assert estimate["n_epochs"] == 2 and estimate["n_train_examples"] + estimate["n_validation_examples"] == 20
    assert estimate["trained_tokens"] == 2 * estimate["tokens_per_epoch"] > 0
    assert estimate["seconds"] is None and "tempering calibrate" in estimate["notes"][0]  # never calibrated
    assert client.get("/v1/fine_tuning/jobs", headers=mine).json()["data"] == []  # nothing was created

    older = client.post("/v1/fine_tuning/estimates", headers=mine,
                        json={**body, "method": None, "hyperparameters": {"n_epochs": 3}}).json()
    assert older["n_epochs"] == 3
    assert _error(client.post("/v1/fine_tuning/estimates", headers=mine, json={**body, "model": "no-such-model"}),
                  404)["param"] == "model"
    assert _error(client.post("/v1/fine_tuning/estimates", headers=mine, json={**body, "model": f"ft:{TINY_ID}:x:y"}),
                  404)["param"] == "model"
    broken = _upload(client, mine, "broken.jsonl", QA + b"{not json}\n")
    error = _error(client.post("/v1/fine_tuning/estimates", headers=mine, json={**body, "training_file": broken}), 400)
    assert (error["param"], error["code"]) == ("training_file", "invalid_file")
    bad = {**body, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}}
    assert "n_epochs" in _error(client.post("/v1/fine_tuning/estimates", headers=mine, json=bad), 400)["param"]
    _not_found(client.post("/v1/fine_tuning/estimates", headers=theirs, json=body), train, "training_file")


# ---------------------------------------------------------------- catalog


def test_catalog_lists_searches_and_says_how_to_get_weights(api):
    client, mine, _ = api
    cards = {c["id"]: c for c in client.get("/v1/catalog", headers=mine).json()["data"]}
    assert {"smollm2-135m-instruct", "phi-3-mini-4k-instruct", TINY_ID} <= set(cards)
    assert cards[TINY_ID]["weights"] == "ready" and cards[TINY_ID]["get_weights"] == []
    found = client.get("/v1/catalog", headers=mine, params={"search": "phi3 128k"}).json()["data"]
    assert {c["id"] for c in found} == {"phi-3-mini-128k-instruct", "phi-3.5-mini-instruct"}

    phi = client.get("/v1/catalog/phi-3-mini-4k-instruct", headers=mine).json()
    assert phi["object"] == "catalog.model" and phi["context_length"] == 4096 and phi["fine_tunable"] is True
    assert phi["license"] == "MIT" and phi["parameters"] > 3e9
    if phi["weights"] == "not downloaded":  # unless this machine's Hugging Face cache holds it
        assert phi["get_weights"] == ["hf download microsoft/Phi-3-mini-4k-instruct --local-dir phi-3-mini-4k-instruct",
                                      "tempering models add-path phi-3-mini-4k-instruct ./phi-3-mini-4k-instruct"]
    error = _error(client.get("/v1/catalog/no-such-model", headers=mine), 404)
    assert error["param"] == "model" and "phi-3-mini-4k-instruct" in error["message"]
    assert _error(client.get("/v1/catalog"), 401)["code"] == "invalid_api_key"


# ---------------------------------------------------------------- exports


@pytest.fixture
def tuned(api, tmp_path):
    """A fine-tuned model of the first project: a job row and its run, trained for three tiny steps."""
    from tempering.store.models import Job, Project
    from tempering.train import TuneConfig, tune

    client, _, _ = api
    db = client.app.state.db
    with db.session() as session:
        project = session.query(Project).filter_by(name="default").one()
        job = Job(project_id=project.id, model=TINY_ID, training_file="file-x", seed=3, config={}, status="running")
        session.add(job)
        session.flush()
        job_id = job.id
    path = tmp_path / "magic.jsonl"
    path.write_bytes(_jsonl([chat_example(f"Say the magic word number {i}.", f"Abracadabra {i}!") for i in range(12)]))
    result = tune(TuneConfig(model=TINY_ID, training_file=path, validation_file=path, seed=3, evaluate=False,
                             checkpoint_every_steps=1, hyperparameters={"n_epochs": 1, "batch_size": 4}),
                  run_id=job_id.removeprefix("ftjob-"))
    with db.session() as session:
        job = session.get(Job, job_id)
        job.status, job.fine_tuned_model = "succeeded", result.model_id
    return result.model_id


def test_export_stores_a_zip_of_the_adapter_or_merged_weights(api, tuned):
    client, mine, _ = api
    response = client.post("/v1/exports", headers=mine, json={"model": tuned, "format": "peft"})
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["object"] == "model.export" and done["kind"] == "fine-tuned" and done["dtype"] is None
    archive = done["file"]
    assert archive["purpose"] == "fine-tune-results" and archive["filename"].endswith("-peft.zip")
    data = client.get(f"/v1/files/{archive['id']}/content", headers=mine).content
    assert len(data) == archive["bytes"]
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    folder = archive["filename"].removesuffix(".zip")
    assert {f"{folder}/adapter_config.json", f"{folder}/adapter_model.safetensors",
            f"{folder}/tempering-export.json"} <= set(names)

    merged = client.post("/v1/exports", headers=mine, json={"model": f"{tuned}:ckpt-step-1", "format": "merged"})
    assert merged.status_code == 200, merged.text
    merged = merged.json()
    assert merged["kind"] == "checkpoint" and merged["model"] == f"{tuned}@step-000001"
    assert merged["dtype"] == "float32" and "model.safetensors" in merged["files"]


def test_export_refusals(api, tuned):
    client, mine, theirs = api
    post = lambda headers, **body: client.post("/v1/exports", headers=headers, json=body)
    assert _error(post(mine, model=tuned, format="merged", dtype="q8_0"), 400)["param"] == "dtype"
    assert _error(post(mine, model=tuned, format="peft", dtype="float16"), 400)["param"] == "dtype"
    assert _error(post(mine, model=TINY_ID, format="merged"), 400)["code"] == "invalid_model"
    assert _error(post(mine, model="/tmp", format="peft"), 404)["param"] == "model"
    assert _error(post(mine, model=f"ft:{TINY_ID}:x:../../x@step-1", format="peft"), 404)["param"] == "model"
    assert _error(post(mine, model=f"{tuned}@step-99", format="peft"), 404)["param"] == "model"
    assert _error(post(mine, model=tuned, format="onnx"), 400)["param"] == "format"
    for model in (tuned, f"{tuned}@step-1", f"{tuned}:ckpt-step-1"):  # another project's model and checkpoints
        assert _error(post(theirs, model=model, format="peft"), 404) == {
            "message": f"No such model: '{model}'", "type": "invalid_request_error", "param": "model",
            "code": "not_found"}
    assert client.get("/v1/files", headers=theirs).json()["data"] == []
    assert client.get("/v1/files", headers=mine).json()["data"] == []  # no archive from any refusal


def test_portal_exports_a_model_and_downloads_it(api, tuned):
    """The models page's Export (services.exports, as the API's) stores the zip as a project file, lists it with
    a download link, and the link serves its bytes; a refusal is shown with the core's words, nothing stored."""
    import re

    client, mine, _ = api
    app = client.app
    signed = client.post("/signin", data={"username": "admin", "password": app.state.initial_admin_password,
                                          "next": "/models"})
    token = re.search(r'name="csrf_token" value="([^"]+)"', signed.text).group(1)
    page = client.get("/models").text
    assert tuned in page and "No exports yet." in page and 'action="/models/export"' in page
    refused = client.post("/models/export", data={"csrf_token": token, "model": tuned, "format": "merged",
                                                  "dtype": "q8_0"})
    assert refused.status_code == 400 and "q8_0 is a GGUF quantization" in refused.text
    assert client.get("/v1/files", headers=mine).json()["data"] == []
    done = client.post("/models/export", data={"csrf_token": token, "model": tuned, "format": "peft"})
    assert done.status_code == 200 and f"Exported {tuned} as" in done.text
    file_id = re.search(r'href="/files/([^/]+)/download"', done.text).group(1)
    [stored] = client.get("/v1/files", headers=mine).json()["data"]
    assert stored["id"] == file_id and stored["filename"].endswith("-peft.zip")
    download = client.get(f"/files/{file_id}/download")
    assert download.status_code == 200 and len(download.content) == stored["bytes"]
    assert stored["filename"] in download.headers["content-disposition"]
    assert any(n.endswith("adapter_model.safetensors") for n in zipfile.ZipFile(io.BytesIO(download.content)).namelist())
    assert client.get("/files/file-nope/download").status_code == 404
    from tempering.store.models import Job, JobCheckpoint

    with app.state.db.session() as session:  # the row the runner records for the run's checkpoint
        job_id = session.query(Job).filter_by(fine_tuned_model=tuned).one().id
        session.add(JobCheckpoint(job_id=job_id, step_number=1, fine_tuned_model_checkpoint=f"{tuned}:ckpt-step-1"))
    job_page = client.get(f"/jobs/{job_id}").text
    checkpoint = re.search(r'action="/models/export" class="inline export">.*?name="model" value="([^"]+)"',
                           job_page, re.DOTALL).group(1)
    done = client.post("/models/export", data={"csrf_token": token, "model": checkpoint, "format": "merged"})
    assert done.status_code == 200 and f"Exported {tuned}@step-" in done.text and "-merged.zip" in done.text
    client.app.state.store.file_path(file_id).unlink()  # a row that outlived its bytes: said, both ways
    gone = client.get(f"/v1/files/{file_id}/content", headers=mine)
    assert gone.status_code == 500 and gone.json()["error"]["code"] == "file_missing"
    assert "missing from the artifact store" in client.get(f"/files/{file_id}/download").text
