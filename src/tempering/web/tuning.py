"""Fine-tuning in the portal: the wizard (name → task and training data → validation → hyperparameters →
review with the estimate → Submit), the jobs list, a job's page with its live progress over Server-Sent Events,
and cancel. The wizard builds the job through ``services.jobs`` with the same fields the API's ``JobCreate``
hands it (``config_fields``), so the stored config is the API's for the same choices."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from tempering.errors import TemperingError
from tempering.services.access import Caller
from tempering.web import render, session
from tempering.web.render import page, redirect

router = APIRouter(include_in_schema=False, dependencies=[Depends(render.csrf_guard)])
PageCaller = Annotated[Caller, Depends(session.page_caller)]

STEPS = ("name", "data", "validation", "hyperparameters", "review")
# The form fields the wizard carries from step to step (each step shows some, the others ride hidden).
FIELDS = ("model", "suffix", "task", "training_file", "validation", "validation_file", "validation_fraction",
          "n_epochs", "batch_size_multiplier", "learning_rate_multiplier", "lora_rank", "seed", "adapter", "optimizer",
          "label_smoothing", "head_init", "class_weights", "early_stopping")
DEFAULTS = {"task": "chat", "validation": "split", "validation_fraction": "0.1", "n_epochs": "auto",
            "batch_size_multiplier": "auto", "learning_rate_multiplier": "auto", "lora_rank": "", "seed": "",
            "adapter": "lora", "optimizer": "adamw", "label_smoothing": "", "head_init": "auto",
            "class_weights": "auto", "early_stopping": "auto"}
ADVANCED = ("lora_rank", "seed", "adapter", "optimizer", "label_smoothing", "head_init", "class_weights",
            "early_stopping")
SHOWN = {"name": ("suffix",), "data": ("task", "training_file"),
         "validation": ("validation", "validation_file", "validation_fraction"),
         "hyperparameters": ("n_epochs", "batch_size_multiplier", "learning_rate_multiplier", *ADVANCED),
         "review": ()}


def _number(text: str, kind):
    """A form's number as the job config takes it; text that is no number goes through unchanged, so the
    config's own check names the field."""
    text = (text or "").strip()
    if text in ("", "auto"):
        return "auto"
    try:
        return kind(text)
    except ValueError:
        return text


def config_fields(state: dict) -> dict:
    """The job config's fields for the wizard's choices: what the API's ``JobCreate.config_fields`` gives for
    the same body (unset choices left out, so the config's defaults apply alike)."""
    fields: dict = {"model": state["model"], "task": state["task"]}
    if state.get("suffix"):
        fields["suffix"] = state["suffix"]
    if state.get("validation") != "file" and state.get("validation_fraction"):
        fields["validation_fraction"] = _number(state["validation_fraction"], float)
    if state.get("seed", "").strip():
        fields["seed"] = _number(state["seed"], int)
    if state.get("lora_rank", "").strip():
        fields["lora"] = {"rank": _number(state["lora_rank"], int)}
    for name in ("adapter", "optimizer"):  # chosen from a list; the config names a choice that is not one
        if state.get(name):
            fields[name] = state[name]
    for name in ("head_init", "class_weights"):  # the config's default, auto: left out like it
        if state.get(name, "auto") not in ("", "auto"):
            fields[name] = state[name]
    if state.get("label_smoothing", "").strip():
        fields["label_smoothing"] = _number(state["label_smoothing"], float)
    if state.get("early_stopping", "auto").strip() not in ("", "auto"):
        fields["early_stopping"] = _number(state["early_stopping"], int)
    hyper = {name: _number(state.get(name, "auto"), kind) for name, kind in
             (("n_epochs", int), ("batch_size_multiplier", float), ("learning_rate_multiplier", float))}
    fields["hyperparameters"] = {k: v for k, v in hyper.items() if v != "auto"}
    return fields


def _files(validation: bool, state: dict) -> dict:
    return {"training_file": state.get("training_file") or "",
            "validation_file": (state.get("validation_file") or None) if validation else None}


def _problems(exc: TemperingError) -> dict[str, str]:
    """A job error's problems by the wizard field they belong to: the config's error names each field
    ("invalid job config: field: problem; …"); any other error names one (its ``param``)."""
    out: dict[str, str] = {}

    def add(field: str, message: str) -> None:
        name = field.rsplit(".", 1)[-1]
        name = {"rank": "lora_rank", "lora": "lora_rank"}.get(name, name)
        name = name if name in FIELDS else "form"
        out[name] = (out.get(name, "") + " " + message).strip()

    if exc.message.startswith("invalid job config: "):
        for part in exc.message.removeprefix("invalid job config: ").split("; "):
            field, sep, message = part.partition(": ")
            add(field if sep else "form", message if sep else part)
    else:
        add(exc.param or "form", exc.message)
    return out


STEP_OF = {field: step for step, fields in SHOWN.items() for field in fields}


def _step_of(problems: dict[str, str]) -> str:
    """The first step showing a field with a problem (problems of no field: the hyperparameters step)."""
    steps = [STEP_OF.get(field, "hyperparameters") for field in problems]
    return min(steps, key=STEPS.index)


def _wizard(request: Request, caller: Caller, state: dict, step: str, status: int = 200, **context):
    from tempering.services import files

    with request.app.state.db.session(write=False) as s:
        usable = [(f.id, f.filename) for f in files.list_files(s, caller.project_id, "fine-tune")
                  if f.status == "processed"]
    hidden = {k: v for k, v in state.items() if k not in SHOWN[step] and v not in (None, "")}
    advanced_open = any(field in (context.get("problems") or {}) for field in ADVANCED)
    return page(request, caller, "wizard.html", status=status, step=step, steps=STEPS, number=STEPS.index(step) + 1,
                state=state, hidden=hidden, usable=usable, advanced_open=advanced_open, **context)


@router.get("/fine-tune")
def wizard_start(request: Request, caller: PageCaller, model: str = ""):
    state = {**DEFAULTS, "model": model[:200]}
    return _wizard(request, caller, state, "name")


@router.post("/fine-tune")
async def wizard_step(request: Request, caller: PageCaller):
    """One step of the wizard: "Next" checks the step and shows the next, "Back" the previous, "Submit"
    creates the job and opens its page."""
    form = await request.form()
    state = {**DEFAULTS, **{k: str(form.get(k, "")).strip()[:200] for k in FIELDS if k in form}}
    step = str(form.get("step", "name"))
    step = step if step in STEPS else "name"
    # the rest reads the database, the upload and the catalog: off the event loop
    return await run_in_threadpool(_step, request, caller, state, step, str(form.get("go", "next")),
                                   form.get("training_upload"))


def _step(request: Request, caller: Caller, state: dict, step: str, go: str, upload):
    index = STEPS.index(step)
    if go == "back":
        return _wizard(request, caller, state, STEPS[max(index - 1, 0)])
    if step == "data" and isinstance(upload, UploadFile) and upload.filename:
        problems = _upload_training(request, caller, upload, state)
        if problems is not None:
            return _wizard(request, caller, state, "data", status=400, upload_problems=problems)
    if go == "submit" and step == "review":
        return _submit(request, caller, state)
    following = STEPS[min(index + 1, len(STEPS) - 1)]
    if following == "review":
        return _review(request, caller, state)
    return _wizard(request, caller, state, following)


def _upload_training(request: Request, caller: Caller, upload: UploadFile, state: dict):
    """A training file uploaded in the wizard: picked when valid; else every problem with its line."""
    from tempering.services.datasets import file_issues
    from tempering.web.pages import store_upload

    try:
        row = store_upload(request, caller, upload)
    except TemperingError as exc:
        return [{"line": None, "message": exc.message, "code": exc.code}]
    if row.status == "error":
        with request.app.state.db.session(write=False) as s:
            return file_issues(s, caller.project_id, request.app.state.store, row.id)
    state["training_file"] = row.id
    return None


def _review(request: Request, caller: Caller, state: dict):
    """The review step: the estimate of the job these choices make (``services.jobs.estimate``: the same checks
    as creating it), or every problem beside its field on the step it belongs to."""
    from tempering.services import jobs

    fields = config_fields(state)
    try:
        with request.app.state.db.session(write=False) as s:
            estimate = jobs.estimate(s, caller.project_id, request.app.state.store, fields,
                                     **_files(state.get("validation") == "file", state))
    except TemperingError as exc:
        problems = _problems(exc)
        return _wizard(request, caller, state, _step_of(problems), status=400, problems=problems)
    return _wizard(request, caller, state, "review", estimate=estimate)


def _submit(request: Request, caller: Caller, state: dict):
    from tempering.services import jobs

    try:
        with request.app.state.db.session() as s:
            job = jobs.create_job(s, caller.project_id, request.app.state.store, config_fields(state),
                                  **_files(state.get("validation") == "file", state))
            job_id = job.id
    except TemperingError as exc:
        problems = _problems(exc)
        return _wizard(request, caller, state, _step_of(problems), status=400, problems=problems)
    return redirect(f"/jobs/{job_id}")


# ---------------------------------------------------------------- jobs


@router.get("/jobs")
def jobs_page(request: Request, caller: PageCaller):
    from tempering.services import jobs
    from tempering.web.sweeps import sweep_rows

    with request.app.state.db.session(write=False) as s:
        rows = jobs.list_jobs(s, caller.project_id, after=None, limit=100).rows
        for row in rows:
            s.expunge(row)
        sweeps = sweep_rows(s, caller.project_id)
    return page(request, caller, "jobs.html", jobs=rows, sweeps=sweeps)


def _point(event) -> dict | None:
    """A chart point from a job event: a step's training loss (a metrics event), or an epoch's validation loss
    (the epoch's event names its last step)."""
    data = event.data or {}
    if data.get("step") is None:
        return None
    if event.type == "metrics" and data.get("train_loss") is not None:
        return {"step": data["step"], "train_loss": data["train_loss"], "valid_loss": None}
    if data.get("valid_loss") is not None:
        return {"step": data["step"], "train_loss": None, "valid_loss": data["valid_loss"]}
    return None


def _metric_points(events) -> list[dict]:
    return [p for p in map(_point, events) if p is not None]


def _job_state(request: Request, caller: Caller, job_id: str, after_seq: int = 0):
    """A job row (detached), its events after ``after_seq`` (oldest first) and its checkpoints."""
    from sqlalchemy import select

    from tempering.services import jobs
    from tempering.store.models import JobEvent

    with request.app.state.db.session(write=False) as s:
        job = jobs.owned_job(s, caller.project_id, job_id)
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.seq > after_seq)
                                .order_by(JobEvent.seq)))
        checkpoints = jobs.checkpoints(s, caller.project_id, job.id, after=None, limit=100).rows
        for row in (job, *events, *checkpoints):
            s.expunge(row)
    return job, events, checkpoints


@router.get("/jobs/{job_id}")
def job_page(request: Request, caller: PageCaller, job_id: str):
    try:
        job, events, checkpoints = _job_state(request, caller, job_id)
    except TemperingError as exc:
        raise session.PageForbidden(exc.message, 404) from None
    from tempering.services.evaluations import of_job
    from tempering.services.jobs import TERMINAL

    with request.app.state.db.session(write=False) as s:
        evaluation = of_job(s, caller.project_id, job.id)
    _ = render.gettext_of(request, caller)
    statuses = {s: _(s) for s in ("validating_files", "queued", "running", "paused", *TERMINAL)}
    # what the job's state allows (the service refuses the rest): a paused job resumes, others pause
    job_actions = [("cancel", _("Cancel")), ("resume", _("Resume")) if job.status == "paused" else ("pause", _("Pause"))]
    return page(request, caller, "job.html", job=job, statuses=json.dumps(statuses), job_actions=job_actions,
                evaluation=evaluation, comparison=_comparison(evaluation), events=list(reversed(events)), checkpoints=checkpoints,
                points=json.dumps(_metric_points(events)), last_seq=events[-1].seq if events else 0,
                finished=job.status in TERMINAL)


def _comparison(evaluation) -> list[tuple[str, str, str]]:
    """The evaluation's metrics as rows: (metric, base, fine-tuned), formatted."""
    if evaluation is None:
        return []

    def value(model, path: str) -> str:
        for part in path.split("."):
            model = getattr(model, part, None) if model is not None else None
        return f"{model:.4f}" if isinstance(model, float) else ("" if model is None else str(model))

    paths = [("validation loss", "loss.loss"), ("perplexity", "loss.perplexity"),
             ("mean token accuracy", "loss.mean_token_accuracy"), ("exact match", "generation.exact_match"),
             ("ROUGE-L", "generation.text.rouge_l"), ("label accuracy", "generation.labels.accuracy"),
             ("accuracy", "classification.accuracy")]
    rows = [(name, value(evaluation.baseline, path), value(evaluation.candidate, path)) for name, path in paths]
    return [row for row in rows if row[1] or row[2]]


@router.get("/jobs/{job_id}/live")
async def job_live(request: Request, caller: PageCaller, job_id: str, after: int = 0):
    """The job's progress as Server-Sent Events: ``status`` (its status and fine-tuned model), ``event`` (each
    new event, metrics included, as JSON) until the job ends; the browser's EventSource reconnects with
    ``Last-Event-ID``, so nothing is lost or repeated."""
    from sse_starlette.sse import EventSourceResponse

    from tempering.services.jobs import TERMINAL

    last = request.headers.get("last-event-id", "")
    after = int(last) if last.isdigit() else after
    await run_in_threadpool(_job_state, request, caller, job_id, 0)  # 404 before the stream starts

    async def stream():
        seen, status = after, None
        while True:
            job, events, _ = await run_in_threadpool(_job_state, request, caller, job_id, seen)
            for e in events:
                seen = e.seq
                yield {"event": "event", "id": str(e.seq), "data": json.dumps(
                    {"seq": e.seq, "created_at": e.created_at, "level": e.level, "type": e.type,
                     "message": e.message, "point": _point(e)})}
            if job.status != status:
                status = job.status
                yield {"event": "status", "data": json.dumps({"status": job.status,
                                                              "fine_tuned_model": job.fine_tuned_model,
                                                              "error": job.error})}
            if job.status in TERMINAL:
                yield {"event": "end", "data": "{}"}
                return
            await asyncio.sleep(0.5)

    return EventSourceResponse(stream(), ping=15)


def _stop_or_resume(request: Request, caller: Caller, job_id: str, what: str):
    """Cancel, pause or resume (``services.jobs``, as the API's routes); the job's page again."""
    from tempering.services import jobs

    try:
        with request.app.state.db.session() as s:
            job = jobs.owned_job(s, caller.project_id, job_id)
            jobs.resume_job(s, job) if what == "resume" else jobs.request_stop(s, job, what)
    except TemperingError as exc:
        raise session.PageForbidden(exc.message, 409) from None
    return redirect(f"/jobs/{job_id}")


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, caller: PageCaller, job_id: str):
    return _stop_or_resume(request, caller, job_id, "cancel")


@router.post("/jobs/{job_id}/pause")
def pause_job(request: Request, caller: PageCaller, job_id: str):
    return _stop_or_resume(request, caller, job_id, "pause")


@router.post("/jobs/{job_id}/resume")
def resume_job(request: Request, caller: PageCaller, job_id: str):
    return _stop_or_resume(request, caller, job_id, "resume")
