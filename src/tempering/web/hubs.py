"""A hub's settings in the portal, for its admins: its name, the classifiers behind its projects' content
filters (``content_safety``), its projects' default quotas, its price table and its secrets (written, never
shown). Each form is parsed into the shape ``POST /v1/organization/hubs/{id}`` takes and handed to
``services.projects``, which checks it (an endpoint the server's administrator has not allowed, a negative
price, an unknown quota: refused there, and shown beside the form that sent it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from starlette.concurrency import run_in_threadpool

from tempering.errors import TemperingError, status_of
from tempering.services.access import Caller
from tempering.web import render, session
from tempering.web.i18n import N_
from tempering.web.render import page

router = APIRouter(include_in_schema=False, dependencies=[Depends(render.csrf_guard)])
PageCaller = Annotated[Caller, Depends(session.page_caller)]

# What the page calls each quota (``store.quotas.Quotas``) and price (``store.usage.PRICE_FIELDS``).
QUOTA_LABELS = {"concurrent_jobs": N_("Concurrent jobs"), "trained_tokens_per_day": N_("Trained tokens per day"),
                "stored_bytes": N_("Stored bytes"), "deployments": N_("Live deployments")}
PRICE_LABELS = {"training_per_1k_tokens": N_("Training, per 1,000 tokens"), "hosting_per_hour": N_("Hosting, per hour"),
                "input_per_1k_tokens": N_("Input, per 1,000 tokens"),
                "output_per_1k_tokens": N_("Output, per 1,000 tokens")}


def _number(text: str):
    """A form field as the number it spells; any other text is passed on as it is, for the service to refuse
    by name."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _hub_page(request: Request, caller: Caller, hub_id: str, status: int = 200, shown: dict | None = None,
              **context):
    """The page; ``shown``: settings a refused form sent, shown in place of the stored ones so nothing typed
    is lost."""
    from tempering.catalog.registry import list_cards
    from tempering.services import projects
    from tempering.store.quotas import QUOTA_KEYS, server_defaults
    from tempering.store.usage import PRICE_FIELDS, price_table

    settings = request.app.state.settings
    try:
        with request.app.state.db.session(write=False) as s:
            hub = projects.get_hub(s, hub_id)
            name, stored = hub.name, dict(hub.settings or {})
            hub_settings = stored | (shown or {})
            secrets = [(r.name, r.updated_at) for r in projects.secret_names(s, hub.id)]
    except TemperingError as exc:
        return page(request, caller, "error.html", status=status_of(exc), message=exc.message)
    prices = hub_settings.get("prices") or {}
    models = ["*"] + [c.id for c in list_cards()]
    models += sorted(set(prices) - set(models))
    price_rows = []
    for model in models:  # an empty field's price: what the model would cost without its own entry
        saved = stored.get("prices") or {}
        fallback = price_table({"prices": {k: v for k, v in saved.items() if k != model}}, model, settings)
        price_rows.append((model, [(field, PRICE_LABELS.get(field, field), (prices.get(model) or {}).get(field),
                                    f"{getattr(fallback, field):g}") for field in PRICE_FIELDS]))
    quotas = hub_settings.get("default_quotas") or {}
    defaults = server_defaults(settings.default_quotas)
    quota_rows = [(key, QUOTA_LABELS.get(key, key), quotas.get(key), defaults.get(key)) for key in QUOTA_KEYS]
    safety = hub_settings.get("content_safety") or {"backend": "local"}
    from tempering.safety.policy import HARM, PROMPT_ATTACKS
    from tempering.services import safety_categories
    from tempering.services.filtering import server_policy

    own_policy = hub_settings.get("content_filter_policy")
    default_policy = own_policy or server_policy(settings).model_dump()
    context.setdefault("typed", {})
    return page(request, caller, "hub.html", status=status, hub_id=hub_id, hub_name=name, safety=safety,
                allowed_urls=settings.upstream_allowed_urls, secrets=secrets, price_fields=[PRICE_LABELS.get(f, f) for f in PRICE_FIELDS],
                price_rows=price_rows, quota_rows=quota_rows, default_policy=default_policy,
                hub_sets_policy=own_policy is not None, categories=safety_categories.names(), harm=HARM,
                prompt_only=PROMPT_ATTACKS, **context)


def _update(request: Request, caller: Caller, hub_id: str, form: str, notice: str, typed: dict | None = None,
            **changes):
    """``services.projects.update_hub`` with ``changes``; its refusal shown beside ``form``, with what was typed
    (``shown`` settings, ``typed`` other fields)."""
    from tempering.services import projects

    try:
        with request.app.state.db.session() as s:
            projects.update_hub(s, projects.get_hub(s, hub_id), caller, **changes)
    except TemperingError as exc:
        return _hub_page(request, caller, hub_id, status=status_of(exc), shown=changes.get("settings"), failed=form,
                         form_error=exc.message, typed=typed or {})
    return _hub_page(request, caller, hub_id, notice=notice)


@router.get("/hubs/{hub_id}")
def hub_page(request: Request, caller: PageCaller, hub_id: str):
    return _hub_page(request, caller, hub_id)


@router.post("/hubs/{hub_id}/name")
def rename_hub(request: Request, caller: PageCaller, hub_id: str, name: Annotated[str, Form(max_length=400)]):
    _ = render.gettext_of(request, caller)
    return _update(request, caller, hub_id, "name", _("Renamed the hub."), typed={"name": name}, name=name)


@router.post("/hubs/{hub_id}/content-safety")
def set_content_safety(request: Request, caller: PageCaller, hub_id: str,
                       backend: Annotated[str, Form(max_length=32)],
                       endpoint: Annotated[str, Form(max_length=2000)] = "",
                       api_key_secret: Annotated[str, Form(max_length=200)] = "",
                       model: Annotated[str, Form(max_length=200)] = ""):
    """The classifiers behind the hub's content filters: the local ones, or a remote backend's endpoint, the
    secret holding its key and (OpenAI-compatible moderation, guard model) its model."""
    spec = {"backend": backend}
    if backend != "local":
        spec |= {"endpoint": endpoint.strip(), "api_key_secret": api_key_secret.strip()}
        if model.strip() and backend in ("openai", "guard"):  # stays filled when azure is chosen
            spec["model"] = model.strip()
    _ = render.gettext_of(request, caller)
    return _update(request, caller, hub_id, "content_safety", _("Saved the content safety backend."),
                   settings={"content_safety": spec})


@router.post("/hubs/{hub_id}/content-filter-policy")
async def set_default_policy(request: Request, caller: PageCaller, hub_id: str):
    """The policy of the hub's deployments that set none (``settings.content_filter_policy``; checked by
    ``services.filtering.check_hub_policy``), or the server's again when ``default`` is sent."""
    from tempering.web.serving import policy_from_form

    policy = policy_from_form(await request.form())
    if policy is not None:
        policy.pop("blocklists")  # a project's, not a hub's
    _ = await run_in_threadpool(render.gettext_of, request, caller)
    return await run_in_threadpool(_update, request, caller, hub_id, "content_filter_policy",
                                   _("Saved the default content filter policy."),
                                   settings={"content_filter_policy": policy})


@router.post("/hubs/{hub_id}/quotas")
async def set_default_quotas(request: Request, caller: PageCaller, hub_id: str):
    """The projects' default quotas: a field per quota, empty for the server's default."""
    from tempering.store.quotas import QUOTA_KEYS

    form = await request.form()
    quotas = {key: _number(str(form.get(f"quota.{key}", ""))) for key in QUOTA_KEYS
              if str(form.get(f"quota.{key}", "")).strip()}
    _ = await run_in_threadpool(render.gettext_of, request, caller)
    return await run_in_threadpool(_update, request, caller, hub_id, "quotas", _("Saved the default quotas."),
                                   settings={"default_quotas": quotas or None})


@router.post("/hubs/{hub_id}/prices")
async def set_prices(request: Request, caller: PageCaller, hub_id: str):
    """The hub's price table: a field per model (``*``: any other) and price, empty for the server's price.
    A field's name is ``price.<model>.<field>``; a name of another form is ignored."""
    from tempering.store.usage import PRICE_FIELDS

    form = await request.form()
    table: dict[str, dict] = {}
    for key, value in form.multi_items():
        parts = key.split(".")
        if len(parts) < 3 or parts[0] != "price" or parts[-1] not in PRICE_FIELDS or not str(value).strip():
            continue
        table.setdefault(".".join(parts[1:-1]), {})[parts[-1]] = _number(str(value))
    _ = await run_in_threadpool(render.gettext_of, request, caller)
    return await run_in_threadpool(_update, request, caller, hub_id, "prices", _("Saved the prices."),
                                   settings={"prices": table or None})


@router.post("/hubs/{hub_id}/secrets")
def set_secret(request: Request, caller: PageCaller, hub_id: str, name: Annotated[str, Form(max_length=200)],
               value: Annotated[str, Form(max_length=8192)]):
    """Set or replace (rotate) a hub secret; its value is never shown again."""
    from tempering.services import projects

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            projects.set_secret(s, projects.get_hub(s, hub_id), name.strip(), value, request.app.state.cipher,
                                caller)
    except TemperingError as exc:
        return _hub_page(request, caller, hub_id, status=status_of(exc), failed="secrets", form_error=exc.message,
                         typed={"secret_name": name})
    return _hub_page(request, caller, hub_id, notice=_("Saved the secret %(name)s.", name=name.strip()))


@router.post("/hubs/{hub_id}/secrets/{name}/delete")
def delete_secret(request: Request, caller: PageCaller, hub_id: str, name: str):
    from tempering.services import projects

    _ = render.gettext_of(request, caller)
    try:
        with request.app.state.db.session() as s:
            projects.delete_secret(s, projects.get_hub(s, hub_id), name, caller)
    except TemperingError as exc:
        return _hub_page(request, caller, hub_id, status=status_of(exc), failed="secrets", form_error=exc.message)
    return _hub_page(request, caller, hub_id, notice=_("Deleted the secret %(name)s.", name=name))
