"""Deployments: make a base model, a fine-tuned model or a checkpoint of the project callable by name; list,
find, delete; their request log and metrics. Creating one loads nothing (the engine loads the base model and
the adapter on the first request), so deployments survive a restart by being rows.

An upstream deployment forwards to an OpenAI-compatible server; its URL must be one the server's
administrator allowed (``TEMPERING_UPSTREAM_ALLOWED_URLS``), compared after strict parsing, so a caller can
neither point the server at an address of its choosing nor receive the server's upstream key elsewhere.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select

from tempering.errors import ConflictError, TemperingError, not_found
from tempering.safety import SafetyPolicy
from tempering.services import audit, filtering
from tempering.store import usage, webhooks
from tempering.store.models import Deployment, DeploymentRequest, looks_like_id
from tempering.store.pages import Page, after_seq
from tempering.train import refs

MAX_NAME = 240
DEFAULT_RPM, DEFAULT_TPM = 1_000, 200_000  # Azure's serverless defaults, per deployment
RATE_LIMIT_PREFIX = "rl-"  # a rate limit's id: "rl-" + its deployment's id (OpenAI's ids read "rl-ada")


@dataclass(frozen=True)
class DeploymentSpec:
    """What a caller asks for; the API's ``DeploymentCreate`` and the portal's form both fill it."""

    model: str
    name: str | None = None
    content_filter: bool = True
    content_filter_policy: dict | None = None  # a SafetyPolicy; None: the server's default
    max_concurrent_requests: int = 8
    max_requests_per_1_minute: int = DEFAULT_RPM
    max_tokens_per_1_minute: int = DEFAULT_TPM
    force: bool = False
    backend: str = "local"
    upstream_url: str | None = None
    upstream_model: str | None = None
    base_model: str | None = None
    quantization: str | None = None  # none | int8 | int4 for the local engine; None: the server's setting


def live(project_id: str):
    return select(Deployment).where(Deployment.project_id == project_id, Deployment.deleted_at.is_(None))


def find_deployment(session, project_id: str, ident: str) -> Deployment | None:
    """A live deployment of the project by id, by name, or (OpenAI's way of calling) by the model it serves."""
    query = live(project_id)
    if looks_like_id(ident):
        found = session.scalars(query.where(Deployment.id == ident)).first()
        if found is not None:
            return found
    return (session.scalars(query.where(Deployment.name == ident)).first()
            or session.scalars(query.where(Deployment.model == ident).order_by(Deployment.created_at)).first())


def owned_deployment(session, project_id: str, ident: str) -> Deployment:
    found = find_deployment(session, project_id, ident) if "\x00" not in ident else None
    if found is None:
        raise not_found("deployment", ident[:240], "deployment_id")
    return found


def normalise_url(url: str, v1: bool = True) -> str:
    """A URL in one canonical form (scheme and host lowercased, default port dropped, no trailing slash, a
    ``/v1`` path unless ``v1`` is false: an API rooted elsewhere, Azure's), or ``ValueError`` for anything that
    is not a plain http(s) URL: no credentials, query, fragment, whitespace or control characters."""
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
        raise ValueError("the URL holds whitespace, a backslash or a control character")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL with a host is needed")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("credentials, a query or a fragment are not allowed")
    port = parts.port  # ValueError for a port out of range or not a number
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    netloc = host if port in (None, default) else f"{host}:{port}"
    path = parts.path.rstrip("/")
    path = path if path.endswith("/v1") or not v1 else f"{path}/v1"
    return f"{parts.scheme}://{netloc}{path}"


def check_upstream(url: str | None, allowed: list[str], param: str = "upstream_url", v1: bool = True) -> str:
    """The canonical form of a remote server's URL that the server's administrator allowed (an upstream
    model's, a content-safety backend's: ``param`` names the field); checked before anything connects
    anywhere."""
    if not url:
        raise TemperingError(f"{param} is needed (the remote server's URL)", param=param, code="invalid_value")
    try:
        wanted = normalise_url(url, v1)
    except ValueError as exc:
        raise TemperingError(f"{param} is not a valid URL: {exc}", param=param, code="invalid_value") from None
    permitted = set()
    for entry in allowed:
        try:
            permitted.add(normalise_url(entry, v1))
        except ValueError:
            continue  # a broken entry allows nothing
    if wanted not in permitted:
        raise TemperingError(f"{param} is not one of the remote servers this server's administrator allowed "
                             "(TEMPERING_UPSTREAM_ALLOWED_URLS)", param=param, code="upstream_not_allowed",
                             kind="forbidden")
    return wanted


def _target(session, project_id: str, spec: DeploymentSpec) -> refs.Target:
    from tempering.catalog import get_card
    from tempering.services.models import owned_target

    try:
        return owned_target(session, project_id, spec.model)
    except TemperingError as exc:
        if exc.kind != "not_found" or spec.backend != "upstream" or not spec.base_model:
            raise
        # a model only the upstream has (vLLM's --lora-modules): prompts are built with its base's template;
        # nothing of this server's is served (an upstream deployment has no local adapter)
        return refs.Target(spec.model, "upstream", get_card(spec.base_model).id)


def create_deployment(session, project_id: str, spec: DeploymentSpec, settings) -> Deployment:
    """A new deployment, within the project's deployments quota (429 past it)."""
    from tempering.evaluate import check_deploy_gate
    from tempering.services.quotas import check_deployment_count

    check_rate_limits(spec.max_requests_per_1_minute, spec.max_tokens_per_1_minute)
    check_deployment_count(session, project_id)

    if spec.max_concurrent_requests > settings.serve_max_concurrent_requests:
        raise TemperingError(f"max_concurrent_requests may be at most {settings.serve_max_concurrent_requests} on "
                             "this server", param="max_concurrent_requests", code="invalid_value")
    upstream_url = check_upstream(spec.upstream_url, settings.upstream_allowed_urls) \
        if spec.backend == "upstream" else None
    target = _target(session, project_id, spec)
    fine_tuned = refs.without_checkpoint(target.name) if target.kind in ("fine-tuned", "checkpoint") else None
    if target.kind == "fine-tuned":
        check_deploy_gate(target.name, spec.force)  # DeployRefusedError → 400 with the numbers
    if spec.backend != "local" and target.task != "chat":
        raise TemperingError(f"only chat models can be served by the {spec.backend} backend", param="backend",
                             code="invalid_value")
    check_quantization(spec.quantization, spec.backend, target.task)
    if spec.backend == "llama.cpp":
        from tempering.serve.llamacpp import available

        if not available():
            raise TemperingError("the llama.cpp backend needs llama-cpp-python on this server (pip install "
                                 "llama-cpp-python; it builds llama.cpp from source)", param="backend",
                                 code="backend_unavailable")
    policy = set_policy_fields(session, project_id, spec.content_filter, spec.content_filter_policy, settings,
                               task=target.task)
    name = spec.name or target.name
    if len(name) > MAX_NAME:
        raise TemperingError("the model id is too long to be the deployment's name; pass a name", param="name")
    if session.scalars(live(project_id).where(Deployment.name == name)).first() is not None:
        raise ConflictError(f"a deployment named {name!r} already exists in this project; pick another name or "
                            "delete it first", param="name", code="deployment_exists")
    deployment = Deployment(project_id=project_id, name=name, model=target.name, fine_tuned_model=fine_tuned,
                            base_model=target.base_model, task=target.task, content_filter=spec.content_filter,
                            content_filter_policy=policy,
                            max_concurrent_requests=spec.max_concurrent_requests, backend=spec.backend,
                            max_requests_per_1_minute=spec.max_requests_per_1_minute,
                            max_tokens_per_1_minute=spec.max_tokens_per_1_minute,
                            upstream_url=upstream_url, quantization=spec.quantization,
                            upstream_model=spec.upstream_model or (target.name if spec.backend == "upstream" else None))
    session.add(deployment)
    session.flush()
    audit.record(session, "deployment.created", project_id=project_id, target=deployment.id, model=deployment.model,
                 content_filter=bool(spec.content_filter))
    webhooks.enqueue(session, project_id, "deployment.created", {"id": deployment.id})
    return deployment


QUANTIZATIONS = ("none", "int8", "int4")


def check_quantization(quantization: str | None, backend: str, task: str) -> None:
    """A deployment's own quantization applies to the local engine serving a chat model on a CPU."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise TemperingError(f"quantization must be one of {', '.join(QUANTIZATIONS)}", param="quantization",
                             code="invalid_value")
    if backend != "local" or task != "chat":
        what = f"the {backend} backend" if backend != "local" else "a classification model"
        raise TemperingError(f"quantization applies to chat models on the local engine, not to {what}; leave it "
                             "out", param="quantization", code="invalid_value")
    if quantization != "none":
        from tempering.hardware import select_placement

        device = select_placement("auto").device.type
        if device != "cpu":
            raise TemperingError(f"{quantization} weights are for CPU serving; this server serves on {device} in "
                                 "bfloat16 (use quantization 'none')", param="quantization", code="invalid_value")


def quantization_of(deployment: Deployment, settings) -> str | None:
    """The local engine's weights a deployment is served with (its own choice or the server's); None where no
    local engine serves it (other backends, classification)."""
    if deployment.backend != "local" or deployment.task != "chat":
        return None
    return deployment.quantization or settings.serve_quantize


def engine_state(deployment: Deployment, serving, settings) -> dict | None:
    """The local engine serving a deployment on this server (``serve.registry.Serving``): its quantization,
    whether it has loaded, and its memory; None where no local engine serves the deployment. Engines load on
    a deployment's first request, so before it: not loaded (and nothing is resolved or fetched to say so)."""
    quantization = quantization_of(deployment, settings)
    if quantization is None:
        return None
    engine = serving.deployment_engine(deployment.id)
    loaded = engine is not None and engine.loaded
    return {"quantization": quantization, "loaded": loaded, "memory_bytes": engine.memory_bytes if loaded else None}


def check_rate_limits(requests: int | None, tokens: int | None) -> None:
    """Requests and tokens per minute: whole numbers from 1 (None: unchanged)."""
    for name, value in (("max_requests_per_1_minute", requests), ("max_tokens_per_1_minute", tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**40):
            raise TemperingError(f"{name} must be a whole number from 1 to {2**40}", param=name, code="invalid_value")


def rate_limits(session, project_id: str) -> list[Deployment]:
    """The project's rate limits: one per live deployment, oldest first."""
    return list(session.scalars(live(project_id).order_by(Deployment.created_at, Deployment.id)))


def rate_limit(session, project_id: str, rate_limit_id: str) -> Deployment:
    """The deployment a rate limit id (``rl-<deployment id>``) names."""
    deployment_id = rate_limit_id.removeprefix(RATE_LIMIT_PREFIX)
    found = None
    if rate_limit_id.startswith(RATE_LIMIT_PREFIX) and looks_like_id(deployment_id):
        found = session.scalars(live(project_id).where(Deployment.id == deployment_id)).first()
    if found is None:
        raise not_found("rate limit", rate_limit_id[:240], "rate_limit_id")
    return found


def set_rate_limit(session, project_id: str, rate_limit_id: str, *, requests: int | None = None,
                   tokens: int | None = None) -> Deployment:
    """Change a deployment's requests and tokens per minute; the next request counts against them."""
    check_rate_limits(requests, tokens)
    deployment = rate_limit(session, project_id, rate_limit_id)
    if requests is not None:
        deployment.max_requests_per_1_minute = requests
    if tokens is not None:
        deployment.max_tokens_per_1_minute = tokens
    audit.record(session, "rate_limit.updated", project_id=project_id, target=deployment.id,
                 max_requests_per_1_minute=deployment.max_requests_per_1_minute,
                 max_tokens_per_1_minute=deployment.max_tokens_per_1_minute)
    return deployment


def set_policy_fields(session, project_id: str, content_filter: bool, policy: SafetyPolicy | dict | None,
                      settings, *, task: str = "chat") -> dict | None:
    """The ``content_filter_policy`` a deployment stores for a caller's choice, checked: off (``content_filter``
    false), the caller's policy, or null (the server's default), which must run with the project's blocklists
    and the server's classifiers."""
    enabled = policy.enabled if isinstance(policy, SafetyPolicy) else (policy or {}).get("enabled", True)
    if not content_filter and policy is not None and enabled:
        raise TemperingError("content_filter false takes no content_filter_policy (the filter is off)",
                             param="content_filter_policy", code="invalid_value")
    if task != "chat" and content_filter and policy is not None:
        raise TemperingError("only chat deployments have a content filter", param="content_filter_policy",
                             code="invalid_value")
    stored = filtering.stored_policy(content_filter, policy)
    filtering.check_policy(session, project_id, filtering.effective_policy(
        stored, filtering.default_policy(session, project_id, filtering.server_policy(settings))))
    return stored


def gate_warnings(deployment: Deployment) -> list[str]:
    """What the deploy gate says about a deployed fine-tuned model without refusing it: a red-team check that
    found it markedly less safe than its base (``evaluate.gate.safety_warning``)."""
    from tempering.evaluate.gate import check_deploy_gate, safety_warning

    if deployment.fine_tuned_model is None or deployment.model != deployment.fine_tuned_model:
        return []
    try:
        warning = safety_warning(check_deploy_gate(deployment.fine_tuned_model, force=True))
    except TemperingError:  # the model's files have gone: nothing to say
        return []
    return [warning] if warning else []


def effective_policy(session, deployment: Deployment, settings) -> SafetyPolicy:
    """The policy a deployment runs under: its own, else its hub's default, else the server's."""
    default = filtering.default_policy(session, deployment.project_id, filtering.server_policy(settings))
    return filtering.effective_policy(deployment.content_filter_policy, default)


def set_content_filter(session, project_id: str, ident: str, content_filter: bool,
                       policy: SafetyPolicy | dict | None, settings) -> Deployment:
    """Change a deployment's content filter; the next request runs under it."""
    deployment = owned_deployment(session, project_id, ident)
    deployment.content_filter_policy = set_policy_fields(session, project_id, content_filter, policy, settings,
                                                         task=deployment.task)
    deployment.content_filter = content_filter
    audit.record(session, "content_filter.updated", project_id=project_id, target=deployment.id,
                 content_filter=content_filter, policy=deployment.content_filter_policy)
    return deployment


def list_deployments(session, project_id: str) -> list[Deployment]:
    return list(session.scalars(live(project_id).order_by(Deployment.created_at, Deployment.id)))


def delete_deployment(session, project_id: str, ident: str, settings=None) -> Deployment:
    """Delete a deployment: the row stays (its request log outlives it) and its hosting time, creation to now,
    goes to the usage ledger in the same transaction."""
    deployment = owned_deployment(session, project_id, ident)
    deployment.deleted_at = int(time.time())
    audit.record(session, "deployment.deleted", project_id=project_id, target=deployment.id)
    usage.charge_hosting(session, deployment, deployment.deleted_at, settings)
    webhooks.enqueue(session, project_id, "deployment.deleted", {"id": deployment.id})
    return deployment


def deployments_of_model(session, model_id: str) -> list[Deployment]:
    """Live deployments serving a fine-tuned model or any of its checkpoints (in any project)."""
    return list(session.scalars(select(Deployment).where(Deployment.fine_tuned_model == model_id,
                                                         Deployment.deleted_at.is_(None))))


@dataclass(frozen=True)
class Metrics:
    deployment: str
    since: float | None
    requests: int
    errors: int
    by_status: dict[str, int]
    latency_ms: dict
    time_to_first_token_ms: dict
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float | None
    content_filter_hits: dict[str, int]  # category → requests it blocked (prompt refused or answer cut)
    content_filtered: dict[str, int]  # direction ("prompt", "completion") → requests blocked


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0]}
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return {"p50": statistics.median(values), "p95": cuts[18]}


def metrics(session, project_id: str, ident: str, since: float | None = None) -> Metrics:
    deployment = owned_deployment(session, project_id, ident)
    query = select(DeploymentRequest).where(DeploymentRequest.deployment_id == deployment.id)
    if since is not None:
        query = query.where(DeploymentRequest.created_at >= since)
    rows = session.scalars(query).all()
    ok = [r for r in rows if r.status < 400]
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
    seconds = sum(r.latency_ms for r in ok) / 1000
    hits: dict[str, int] = {}
    directions: dict[str, int] = {}
    for r in rows:
        if r.filtered:
            directions[r.filtered] = directions.get(r.filtered, 0) + 1
        for category in r.filtered_categories or ():
            hits[category] = hits.get(category, 0) + 1
    return Metrics(
        deployment=deployment.id, since=since, requests=len(rows), errors=len(rows) - len(ok), by_status=by_status,
        latency_ms=percentiles([r.latency_ms for r in ok]),
        time_to_first_token_ms=percentiles([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        prompt_tokens=sum(r.prompt_tokens for r in rows), completion_tokens=sum(r.completion_tokens for r in rows),
        tokens_per_second=sum(r.completion_tokens for r in ok) / seconds if seconds > 0 else None,
        content_filter_hits=hits, content_filtered=directions)


def request_log(session, project_id: str, ident: str, *, after: str | None, limit: int) -> Page:
    """The deployment's request log, newest first, a page of ``limit`` after the entry ``after``."""
    deployment = owned_deployment(session, project_id, ident)
    query = select(DeploymentRequest).where(DeploymentRequest.deployment_id == deployment.id)
    return after_seq(session, query, DeploymentRequest.seq, after, "req-", limit, "request log entry")


def gguf_of(model: str, settings) -> Path:
    """The GGUF a llama.cpp deployment of ``model`` serves: exported (the adapter merged, f16) on first use
    into ``$TEMPERING_HOME/gguf``, then kept; several deployments of one model share it."""
    from tempering.export import default_out, export_model

    folder = settings.root / "gguf" / default_out(model, "gguf").name
    if not (folder / "model.gguf").is_file():
        export_model(model, "gguf", folder, force=True)
    return folder / "model.gguf"
