"""The API's one permission decision: every route names an action of ``services.access.ACTIONS`` here, and the
``authorize`` dependency (on the whole app) checks the caller's role against it before the handler runs. The portal's pages
are listed in ``web.PAGES`` (merged here); their caller comes from the session cookie, not a key.

A route missing from ``ROUTES`` is refused (500, ``no_permission_decision``) rather than served:
``tests/test_permissions.py`` walks ``app.routes`` so none can be added without a decision. Routes under
``/v1/organization/projects/{project_id}`` act in the project of their path, with the caller's role there
(their user's membership, capped by the key's own role); a project where they have none is answered 404, as
any other project's object is. Hub actions act in the hub of the path, else the hub of the caller's project.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from tempering import web
from tempering.api.deps import CALLER_STATE, authenticate, client_address
from tempering.api.errors import APIError
from tempering.services import access
from tempering.services.access import PUBLIC, SIGNED_IN, Caller

_ORG = "/v1/organization"
_PROJECT = _ORG + "/projects/{project_id}"
_BLOCKLIST = "/v1/contentsafety/text/blocklists/{name}"

# (method, path as routed) → action. HEAD is answered as GET.
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/health"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,  # its own scrape token (settings.metrics_token), not a project's key
    ("POST", "/v1/files"): "data.write",
    ("GET", "/v1/files"): "project.read",
    ("GET", "/v1/files/{file_id}"): "project.read",
    ("GET", "/v1/files/{file_id}/content"): "project.read",
    ("DELETE", "/v1/files/{file_id}"): "data.write",
    ("POST", "/v1/files/{file_id}/report"): "project.read",
    ("POST", "/v1/files/{file_id}/convert"): "data.write",
    ("POST", "/v1/files/{file_id}/split"): "data.write",
    ("POST", "/v1/fine_tuning/jobs"): "jobs.write",
    ("GET", "/v1/fine_tuning/jobs"): "project.read",
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): "project.read",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): "jobs.write",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/pause"): "jobs.write",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/resume"): "jobs.write",
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): "project.read",
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): "project.read",
    ("POST", "/v1/fine_tuning/estimates"): "project.read",
    ("POST", "/v1/fine_tuning/sweeps"): "jobs.write",  # its trials are jobs: the same action creates them
    ("GET", "/v1/fine_tuning/sweeps"): "project.read",
    ("GET", "/v1/fine_tuning/sweeps/{sweep_id}"): "project.read",
    ("POST", "/v1/fine_tuning/sweeps/{sweep_id}/cancel"): "jobs.write",
    ("GET", "/v1/models"): "project.read",
    ("GET", "/v1/models/{model_id:path}"): "project.read",
    ("DELETE", "/v1/models/{model_id:path}"): "models.write",
    ("POST", "/v1/exports"): "models.write",
    ("GET", "/v1/catalog"): "project.read",
    ("GET", "/v1/catalog/{model_id}"): "project.read",
    ("POST", "/v1/evaluations"): "evaluations.write",
    ("GET", "/v1/evaluations"): "project.read",
    ("GET", "/v1/evaluations/{evaluation_id}"): "project.read",
    ("POST", "/v1/evaluations/{evaluation_id}/cancel"): "evaluations.write",
    ("POST", "/v1/deployments"): "deployments.write",
    ("POST", "/v1/deployments/{deployment_id}/content_filter"): "deployments.write",
    ("GET", "/v1/deployments"): "project.read",
    ("GET", "/v1/deployments/{deployment_id}"): "project.read",
    ("GET", "/v1/deployments/{deployment_id}/metrics"): "project.read",
    ("GET", "/v1/deployments/{deployment_id}/requests"): "project.read",
    ("DELETE", "/v1/deployments/{deployment_id}"): "deployments.write",
    ("POST", "/v1/chat/completions"): "deployments.call",
    ("POST", "/v1/completions"): "deployments.call",
    ("POST", "/v1/classifications"): "deployments.call",
    ("POST", "/v1/moderations"): "deployments.call",
    ("GET", "/v1/contentsafety/text/blocklists"): "project.read",
    ("GET", _BLOCKLIST): "project.read",
    ("GET", _BLOCKLIST + "/blocklistItems"): "project.read",
    ("PATCH", _BLOCKLIST): "deployments.write",
    ("DELETE", _BLOCKLIST): "deployments.write",
    ("POST", _BLOCKLIST + ":addOrUpdateBlocklistItems"): "deployments.write",
    ("POST", _BLOCKLIST + ":removeBlocklistItems"): "deployments.write",
    ("GET", "/v1/contentsafety/categories"): "project.read",
    ("POST", "/v1/contentsafety/categories"): "server.admin",  # the server's classifiers, every project's
    ("DELETE", "/v1/contentsafety/categories/{name}"): "server.admin",
    # people and access (routers.organization)
    ("GET", "/v1/me"): SIGNED_IN,
    ("GET", _ORG + "/hubs"): SIGNED_IN,
    ("POST", _ORG + "/hubs"): "server.admin",
    ("GET", _ORG + "/hubs/{hub_id}"): "hub.admin",
    ("POST", _ORG + "/hubs/{hub_id}"): "hub.admin",
    ("POST", _ORG + "/hubs/{hub_id}/projects"): "hub.admin",
    ("GET", _ORG + "/hubs/{hub_id}/secrets"): "hub.admin",
    ("PUT", _ORG + "/hubs/{hub_id}/secrets/{name}"): "hub.admin",
    ("DELETE", _ORG + "/hubs/{hub_id}/secrets/{name}"): "hub.admin",
    ("GET", _ORG + "/users"): "server.admin",
    ("POST", _ORG + "/users"): "server.admin",
    ("GET", _ORG + "/users/{user_id}"): "server.admin",
    ("POST", _ORG + "/users/{user_id}"): "server.admin",
    ("POST", _ORG + "/users/{user_id}/password"): "server.admin",
    ("GET", _ORG + "/projects"): SIGNED_IN,
    ("POST", _ORG + "/projects"): "hub.admin",
    ("GET", _PROJECT): "project.read",
    ("POST", _PROJECT): "project.manage",
    ("DELETE", _PROJECT): "project.manage",
    ("GET", _PROJECT + "/users"): "project.read",
    ("POST", _PROJECT + "/users"): "members.manage",
    ("GET", _PROJECT + "/users/{user_id}"): "project.read",
    ("POST", _PROJECT + "/users/{user_id}"): "members.manage",
    ("DELETE", _PROJECT + "/users/{user_id}"): "members.manage",
    ("GET", _PROJECT + "/api_keys"): "keys.self",
    ("POST", _PROJECT + "/api_keys"): "keys.self",
    ("GET", _PROJECT + "/api_keys/{key_id}"): "keys.self",
    ("DELETE", _PROJECT + "/api_keys/{key_id}"): "keys.self",
    ("GET", _PROJECT + "/service_accounts"): "keys.manage",
    ("POST", _PROJECT + "/service_accounts"): "keys.manage",
    ("GET", _PROJECT + "/service_accounts/{service_account_id}"): "keys.manage",
    ("DELETE", _PROJECT + "/service_accounts/{service_account_id}"): "keys.manage",
    ("GET", _PROJECT + "/audit_logs"): "audit.read",
    # usage and costs (routers.usage): over the projects the caller has a role in, decided inside
    ("GET", _ORG + "/usage/completions"): SIGNED_IN,
    ("GET", _ORG + "/usage/fine_tuning"): SIGNED_IN,
    ("GET", _ORG + "/usage/hosting"): SIGNED_IN,
    ("GET", _ORG + "/costs"): SIGNED_IN,
    ("GET", _PROJECT + "/rate_limits"): "project.read",
    ("GET", _PROJECT + "/rate_limits/{rate_limit_id}"): "project.read",
    ("POST", _PROJECT + "/rate_limits/{rate_limit_id}"): "project.manage",  # Owners, as quotas (docs/access.md)
    ("GET", _PROJECT + "/webhooks"): "project.manage",
    ("POST", _PROJECT + "/webhooks"): "project.manage",
    ("GET", _PROJECT + "/webhooks/{webhook_id}"): "project.manage",
    ("DELETE", _PROJECT + "/webhooks/{webhook_id}"): "project.manage",
    ("GET", _PROJECT + "/webhooks/{webhook_id}/deliveries"): "project.manage",
    **web.PAGES,  # the portal's pages: their caller comes from the session cookie (web.session)
}


def route_key(request: Request) -> tuple[str, str] | None:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    return method, path


def action_of(request: Request) -> str:
    key = route_key(request)
    action = ROUTES.get(key) if key else None
    if action is None:  # fail closed: a route nobody decided on is not served
        raise APIError(500, f"no permission decision for {key}", code="no_permission_decision")
    return action


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer tk-…`")


async def authorize(request: Request,
                    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> Caller | None:
    """The caller, allowed the route's action (None on public routes); 401 without a valid key, 403 with a
    role too low, 404 for a project or hub of the path the caller has no part in. Runs on the event loop: the
    common case (the key's own project, already authenticated by the request guard) reads no database."""
    action = action_of(request)
    if action == PUBLIC:
        return None
    if route_key(request) in web.PAGES:  # a portal page: the caller is the session cookie's, not a key's
        from tempering.services.audit import ACTOR
        from tempering.web.session import authorize_page

        caller = await run_in_threadpool(authorize_page, request, action)
        ACTOR.set(caller)  # this request's task only: the audit log's actor, as the request guard sets for keys
        return caller
    caller = request.scope.get("state", {}).get(CALLER_STATE)
    if caller is None:  # an app mounted without the request guard (some tests build it so)
        caller = await run_in_threadpool(authenticate, request.app.state.db,
                                         request.headers.get("authorization", ""), client_address(request.scope))
    project_id = request.path_params.get("project_id")
    if (project_id is not None and project_id != caller.project_id) or action in access.HUB_ACTIONS:
        caller = await run_in_threadpool(_decide_in_database, request, caller, action, project_id)
        if action in access.HUB_ACTIONS:
            return caller
    if action != SIGNED_IN and not caller.can(action):
        least = access.ROLE_NAMES[access.ACTIONS[action][0]]
        raise APIError(403, f"Your role in this project ({access.ROLE_NAMES.get(caller.role, caller.role)}) "
                            f"does not allow this; it needs {least} or higher.", code="permission_denied")
    return caller


def _decide_in_database(request: Request, caller: Caller, action: str, project_id: str | None) -> Caller:
    with request.app.state.db.session(write=False) as session:
        if project_id is not None and project_id != caller.project_id:
            caller = _in_project(session, caller, project_id)
        if action in access.HUB_ACTIONS:
            _check_hub_action(session, caller, action, request.path_params.get("hub_id"))
    return caller


def _in_project(session, caller: Caller, project_id: str) -> Caller:
    """The caller acting in another project of theirs (a user's key only; a service account's key is bound to
    its own project)."""
    from dataclasses import replace

    role = access.project_role(session, caller.user_id, project_id) if caller.user_id else None
    role = access.lower(role, caller.role)
    if role is None:
        raise APIError(404, f"No such project: '{project_id}'", code="not_found", param="project_id")
    return replace(caller, project_id=project_id, role=role)


def _check_hub_action(session, caller: Caller, action: str, hub_id: str | None) -> None:
    if action == "server.admin":
        if not caller.is_admin:
            raise APIError(403, "Only a server administrator may do this.", code="permission_denied")
        if caller.role != "owner":  # an administrator's key with a lower role, as for hub administration
            raise APIError(403, "This API key's role does not allow server administration.", code="permission_denied")
        return
    from tempering.store.models import Hub, Project

    if hub_id is None:
        hub_id = session.get(Project, caller.project_id).hub_id
    elif session.get(Hub, hub_id) is None or not (
            caller.is_admin or (caller.user_id and access.is_hub_admin(session, caller.user_id, hub_id))
            or _member_of_hub(session, caller, hub_id)):
        raise APIError(404, f"No such hub: '{hub_id}'", code="not_found", param="hub_id")
    if not (caller.is_admin or (caller.user_id and access.is_hub_admin(session, caller.user_id, hub_id))):
        raise APIError(403, "Only an admin of this hub may do this.", code="permission_denied")
    if caller.role != "owner" and not caller.is_admin:  # a key with a lower role cannot act as hub admin
        raise APIError(403, "This API key's role does not allow hub administration.", code="permission_denied")


def _member_of_hub(session, caller: Caller, hub_id: str) -> bool:
    """Whether the hub is the caller's to know of: their key's project is in it, or they are its member."""
    from tempering.store.models import HubMember, Project

    if session.get(Project, caller.project_id).hub_id == hub_id:
        return True
    return bool(caller.user_id) and session.get(HubMember, (hub_id, caller.user_id)) is not None


CallerDep = Annotated[Caller, Depends(authorize)]
