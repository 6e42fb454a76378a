"""Models, deployments and the playground in the portal: deploy a model or checkpoint (content filter on or
off), delete a fine-tuned model (the service refuses while deployments serve it, naming them), delete a
deployment, and chat with a deployment through ``app.state.chat``, the chat service the API uses (so filters,
concurrency limits and the request log apply alike)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from starlette.concurrency import run_in_threadpool

from tempering.errors import TemperingError, status_of
from tempering.services.access import Caller
from tempering.web import render, session
from tempering.web.render import page, redirect

router = APIRouter(include_in_schema=False, dependencies=[Depends(render.csrf_guard)])
PageCaller = Annotated[Caller, Depends(session.page_caller)]


def _models_page(request: Request, caller: Caller, status: int = 200, **context):
    from tempering.services import deployments, exports, files, models
    from tempering.services.jobs import list_jobs

    with request.app.state.db.session(write=False) as s:
        entries = models.list_models(s, caller.project_id)
        jobs = {j.fine_tuned_model: j for j in list_jobs(s, caller.project_id, after=None, limit=100).rows
                if j.fine_tuned_model}
        serving = {m.id: [d.name for d in deployments.deployments_of_model(s, m.id)] for m in entries
                   if m.id in jobs}
        lineage = {name: {"job": j.id, "base": j.model, "data": j.training_file} for name, j in jobs.items()}
        exported = [(f.id, f.filename, f.bytes, f.created_at)
                    for f in files.list_files(s, caller.project_id, purpose=exports.PURPOSE)]
    fine_tuned = [m for m in entries if m.id in jobs]
    return page(request, caller, "models.html", status=status, fine_tuned=fine_tuned, lineage=lineage,
                serving=serving, exported=exported, **context)


@router.get("/models")
def models_page(request: Request, caller: PageCaller):
    return _models_page(request, caller)


@router.post("/models/export")
def export_model(request: Request, caller: PageCaller, model: Annotated[str, Form(max_length=240)],
                 format: Annotated[str, Form(max_length=16)] = "peft",
                 dtype: Annotated[str, Form(max_length=16)] = "auto"):
    """The model as a PEFT adapter, merged weights or GGUF, zipped and stored as a file of the project
    (``services.exports``, as the API's ``POST /v1/exports``; seconds for a small model, minutes for a 3.8B
    one), then listed with its download link."""
    from tempering.services import exports

    _ = render.gettext_of(request, caller)
    state = request.app.state
    try:
        done = exports.export(state.db, caller.project_id, state.store, model, format, dtype=dtype)
    except TemperingError as exc:
        return _models_page(request, caller, status=status_of(exc), error=exc.message)
    return _models_page(request, caller, notice=_("Exported %(model)s as %(name)s.", model=done.model,
                                                  name=done.file.filename), new_export=done.file.id)


@router.post("/models/deploy")
def deploy(request: Request, caller: PageCaller, model: Annotated[str, Form(max_length=240)],
           name: Annotated[str, Form(max_length=64)] = "",
           content_filter: Annotated[str, Form(max_length=8)] = "",
           force: Annotated[str, Form(max_length=8)] = "",
           quantization: Annotated[str, Form(max_length=8)] = ""):
    """A deployment of the model (``services.deployments.create_deployment``, as the API's: the deploy gate
    refuses a model its evaluation judged worse than its base unless ``force``)."""
    from tempering.services.deployments import DeploymentSpec, create_deployment

    spec = DeploymentSpec(model=model, name=name.strip() or None, content_filter=content_filter == "on",
                          force=force == "on", quantization=quantization or None)
    try:
        with request.app.state.db.session() as s:
            deployment = create_deployment(s, caller.project_id, spec, request.app.state.settings)
            deployment_id = deployment.id
    except TemperingError as exc:
        return _models_page(request, caller, status=400, error=exc.message)
    return redirect(f"/deployments?created={deployment_id}")


@router.post("/models/delete")
def delete_model(request: Request, caller: PageCaller, model: Annotated[str, Form(max_length=240)]):
    from tempering.services.models import delete_model as delete

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            delete(s, caller.project_id, model)
    except TemperingError as exc:  # still deployed: the service names the deployments
        return _models_page(request, caller, status=409, error=exc.message)
    return _models_page(request, caller, notice=_("Deleted %(model)s.", model=model))


# ---------------------------------------------------------------- deployments


def _deployments_page(request: Request, caller: Caller, status: int = 200, **context):
    from tempering.services.deployments import list_deployments

    with request.app.state.db.session(write=False) as s:
        rows = list_deployments(s, caller.project_id)
        for row in rows:
            s.expunge(row)
    return page(request, caller, "deployments.html", status=status, deployments=rows,
                base_url=str(request.base_url).rstrip("/"), **context)


@router.get("/deployments")
def deployments_page(request: Request, caller: PageCaller, created: str = ""):
    _ = render.gettext_of(request, caller)
    notice = _("Deployed: %(id)s. Try it in the playground.", id=created[:40]) if created else None
    return _deployments_page(request, caller, notice=notice, created=created[:40])


@router.get("/deployments/{deployment_id}")
def deployment_page(request: Request, caller: PageCaller, deployment_id: str):
    """One deployment: how to call it, its metrics and latency over its last requests, its request log, its
    prices (the project's price table), the base model's licence and its content filter's policy."""
    return _deployment_page(request, caller, deployment_id)


def _deployment_page(request: Request, caller: Caller, deployment_id: str, status: int = 200,
                     shown_policy: dict | None = None, **context):
    """The page; ``shown_policy``: a refused policy form's values, shown in place of the stored policy."""
    from tempering.catalog import get_card
    from tempering.safety.policy import HARM, PROMPT_ATTACKS
    from tempering.services import blocklists as lists
    from tempering.services import deployments as service
    from tempering.services import safety_categories
    from tempering.store.usage import hosting_cost, hub_settings, prices_for

    settings = request.app.state.settings
    try:
        with request.app.state.db.session(write=False) as s:
            d = service.owned_deployment(s, caller.project_id, deployment_id)
            s.expunge(d)
            numbers = service.metrics(s, caller.project_id, d.id)
            log = service.request_log(s, caller.project_id, d.id, after=None, limit=50).rows
            for row in log:
                s.expunge(row)
            prices = prices_for(s, caller.project_id, d.base_model)
            engine = service.engine_state(d, request.app.state.serving, settings)
            blocklists = [b.name for b in lists.listing(s, caller)]
            effective = service.effective_policy(s, d, settings).model_dump()
            hub_default = "content_filter_policy" in (hub_settings(s, caller.project_id) or {})
    except TemperingError as exc:
        return _deployments_page(request, caller, status=404, error=exc.message)
    import time

    policy = shown_policy or effective
    hosted = (d.deleted_at or time.time()) - d.created_at
    latencies = [r.latency_ms for r in reversed(log) if r.status < 400]
    served = [r for r in reversed(log) if r.status < 400]
    prompt_tokens = [float(r.prompt_tokens or 0) for r in served]
    completion_tokens = [float(r.completion_tokens or 0) for r in served]
    token_top = max(prompt_tokens + completion_tokens, default=0.0)
    return page(request, caller, "deployment.html", status=status, deployment=d, metrics=numbers, log=log,
                prices=prices, hosted_hours=hosted / 3600, hosted_cost=hosting_cost(hosted, prices),
                licence=get_card(d.base_model).license, sparkline=_sparkline(latencies),
                prompt_line=_sparkline(prompt_tokens, top=token_top),
                completion_line=_sparkline(completion_tokens, top=token_top), token_top=int(token_top),
                base_url=str(request.base_url).rstrip("/"), engine=engine, policy=policy,
                policy_is_default=d.content_filter_policy is None and shown_policy is None, hub_default=hub_default,
                categories=safety_categories.names(), harm=HARM, prompt_only=PROMPT_ATTACKS, blocklists=blocklists,
                **context)


def _sparkline(values: list[float], width: int = 480, height: int = 80, top: float | None = None) -> str:
    """SVG points of a line over the last requests (oldest left), scaled to ``top`` (default: the largest value;
    two lines drawn on one scale share it): drawn by the server, no script."""
    if len(values) < 2:
        return ""
    top = (top if top is not None else max(values)) or 1.0
    step = width / (len(values) - 1)
    return " ".join(f"{i * step:.1f},{height - v / top * (height - 4):.1f}" for i, v in enumerate(values))


@router.post("/deployments/{deployment_id}/delete")
def delete_deployment(request: Request, caller: PageCaller, deployment_id: str):
    from tempering.services.deployments import delete_deployment as delete

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            gone = delete(s, caller.project_id, deployment_id)
            name = gone.name
    except TemperingError as exc:
        return _deployments_page(request, caller, status=404, error=exc.message)
    return _deployments_page(request, caller, notice=_("Deleted the deployment %(name)s.", name=name))


@router.post("/deployments/{deployment_id}/content-filter")
def content_filter(request: Request, caller: PageCaller, deployment_id: str,
                   content_filter: Annotated[str, Form(max_length=8)] = ""):
    """Turn a deployment's content filter on (the server's default policy) or off
    (``services.deployments.set_content_filter``, as the API's route)."""
    from tempering.services.deployments import set_content_filter

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            row = set_content_filter(s, caller.project_id, deployment_id, content_filter == "on", None,
                                     request.app.state.settings)
            name = row.name
    except TemperingError as exc:
        return _deployments_page(request, caller, status=400, error=exc.message)
    return _deployments_page(request, caller, notice=_("Changed the content filter of %(name)s.", name=name))


@router.post("/deployments/{deployment_id}/content-filter-policy")
async def content_filter_policy(request: Request, caller: PageCaller, deployment_id: str):
    """A deployment's own policy from the page's form (a threshold per category and direction, empty for not
    checked; the project's blocklists; fail closed; the stream window), or the server's default policy when
    ``default`` is sent; checked and stored by ``services.deployments.set_content_filter`` as the API's
    ``content_filter_policy``."""
    form = await request.form()  # read here; the rest (database, classifiers) runs off the event loop
    return await run_in_threadpool(_set_policy, request, caller, deployment_id, form)


def policy_from_form(form) -> dict | None:
    """A policy from the fields of ``_policy.html`` (and the deployment's blocklist boxes), in the API's shape
    for the service to check; None when ``default`` was sent (the default policy instead)."""
    if form.get("default"):
        return None
    policy = {"prompt": {}, "completion": {}, "blocklists": [str(v) for v in form.getlist("blocklist")],
              "fail_closed": form.get("fail_closed") == "on",
              "stream_window": str(form.get("stream_window", "")).strip() or 160}
    for key, value in form.multi_items():
        direction, _dot, name = key.partition(".")
        if direction in ("prompt", "completion") and name and str(value):
            policy[direction][name] = str(value)
    return policy


def _set_policy(request: Request, caller: Caller, deployment_id: str, form):
    from tempering.services.deployments import set_content_filter

    policy = policy_from_form(form)
    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            set_content_filter(s, caller.project_id, deployment_id, True, policy, request.app.state.settings)
    except TemperingError as exc:
        return _deployment_page(request, caller, deployment_id, status=status_of(exc), shown_policy=policy,
                                policy_error=exc.message)
    return _deployment_page(request, caller, deployment_id, notice=_("Saved the content filter policy."))


# ---------------------------------------------------------------- playground


def _playground(request: Request, caller: Caller, status: int = 200, **context):
    from tempering.services.deployments import list_deployments

    with request.app.state.db.session(write=False) as s:
        chat = [(d.name, d.model) for d in list_deployments(s, caller.project_id) if d.task == "chat"]
    values = {"deployment": "", "compare": "", "system": "", "message": "", "temperature": "0", "max_tokens": "64",
              **context}
    return page(request, caller, "playground.html", status=status, chat_deployments=chat, **values)


@router.get("/playground")
def playground_page(request: Request, caller: PageCaller, deployment: str = ""):
    return _playground(request, caller, deployment=deployment[:64])


async def answer_pieces(request: Request, caller: Caller, deployment: str, system: str, message: str,
                        temperature: float, max_tokens: int | None):
    """The deployment's answer, piece by piece, through the chat service the API uses (the content filter,
    concurrency limits and the request log apply as to an API call)."""
    from tempering.serve.params import SamplingParams
    from tempering.services.chat import ChoiceState, Done, Piece, Timer, token_budget

    chat = request.app.state.chat
    timer = Timer()
    served = await chat.served(caller.project_id, deployment, "chat")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    prompt = await chat.chat_prompt(served, messages)
    budget = token_budget(max_tokens, len(prompt), served.context_length,
                          request.app.state.settings.serve_default_max_tokens, "max_tokens")
    params = [SamplingParams(max_tokens=budget, temperature=temperature)]
    events = chat.generate(served, "chat.completions", timer, prompt, params, [], stream=True,
                           states=[ChoiceState(0)], check=messages)
    try:
        async for event in events:
            if isinstance(event, Piece) and event.text:
                yield event.text
            elif isinstance(event, Done):
                break
    finally:
        await events.aclose()


def _choices(temperature: str, max_tokens: str) -> tuple[float, int | None]:
    return float(temperature or 0), int(max_tokens) if max_tokens.strip() else None


@router.post("/playground")
async def playground_send(request: Request, caller: PageCaller, deployment: Annotated[str, Form(max_length=64)],
                          message: Annotated[str, Form(max_length=20000)],
                          system: Annotated[str, Form(max_length=20000)] = "",
                          temperature: Annotated[str, Form(max_length=8)] = "0",
                          max_tokens: Annotated[str, Form(max_length=8)] = "64",
                          compare: Annotated[str, Form(max_length=64)] = ""):
    """The whole answer (of two deployments side by side with ``compare``), for a browser without script."""
    values = {"deployment": deployment, "compare": compare, "system": system, "message": message,
              "temperature": temperature, "max_tokens": max_tokens}
    _ = render.gettext_of(request, caller)
    try:
        replies = []
        for name in [deployment] + ([compare] if compare else []):
            pieces = answer_pieces(request, caller, name, system, message, *_choices(temperature, max_tokens))
            replies.append((name, "".join([piece async for piece in pieces])))
    except ValueError:
        return _playground(request, caller, status=400, chat_error=_("Temperature and maximum tokens must be numbers."),
                           **values)
    except TemperingError as exc:
        return _playground(request, caller, status=400, chat_error=exc.message, **values)
    return _playground(request, caller, replies=replies, **values)


@router.post("/playground/stream")
async def playground_stream(request: Request, caller: PageCaller, deployment: Annotated[str, Form(max_length=64)],
                            message: Annotated[str, Form(max_length=20000)],
                            system: Annotated[str, Form(max_length=20000)] = "",
                            temperature: Annotated[str, Form(max_length=8)] = "0",
                            max_tokens: Annotated[str, Form(max_length=8)] = "64"):
    """The playground's answer as it is generated (Server-Sent Events: ``piece`` frames, then ``done``; a
    problem is an ``error`` frame with its message). The page's script reads it; without script the form
    posts to ``/playground`` and gets the whole answer."""
    import json

    from fastapi.responses import StreamingResponse

    _ = render.gettext_of(request, caller)

    async def frames():
        try:
            pieces = answer_pieces(request, caller, deployment, system, message, *_choices(temperature, max_tokens))
            async for piece in pieces:
                yield f"event: piece\ndata: {json.dumps({'text': piece})}\n\n"
            yield "event: done\ndata: {}\n\n"
        except ValueError:
            text = _("Temperature and maximum tokens must be numbers.")
            yield f"event: error\ndata: {json.dumps({'message': text})}\n\n"
        except TemperingError as exc:
            yield f"event: error\ndata: {json.dumps({'message': exc.message})}\n\n"

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
