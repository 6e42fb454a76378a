"""The web portal: server-rendered pages (Jinja2, htmx, Server-Sent Events) over the same core the REST API
calls. Handlers parse a form, call the ``services`` function the API calls, and render; they hold no business
rules and never call the REST API (nor import ``tempering.api`` or ``tempering.client``).

``PAGES`` is the portal's part of the one permission table: every page's (method, path) → the action of
``services.access.ACTIONS`` it takes. ``api.permissions.ROUTES`` merges it, and the app-wide ``authorize``
dependency resolves a page's caller from the session cookie (``web.session``) and applies the same
``can(role, action)``. ``mount(app)`` adds the pages to the app ``api.app.create_app`` builds.
"""

from __future__ import annotations

from tempering.services.access import PUBLIC, SIGNED_IN

PAGES: dict[tuple[str, str], str] = {
    ("GET", "/"): SIGNED_IN,
    ("GET", "/static/{name}"): PUBLIC,
    ("GET", "/signin"): PUBLIC,
    ("POST", "/signin"): PUBLIC,
    ("POST", "/signout"): SIGNED_IN,
    ("POST", "/locale"): SIGNED_IN,
    ("GET", "/account"): SIGNED_IN,
    ("POST", "/account/password"): SIGNED_IN,  # one's own, the current password checked
    ("GET", "/projects"): SIGNED_IN,
    ("POST", "/projects/switch"): SIGNED_IN,  # only to a project the user has a role in (access.project_role)
    ("POST", "/hubs"): "server.admin",
    ("GET", "/users"): "server.admin",
    ("POST", "/users"): "server.admin",
    ("POST", "/users/{user_id}"): "server.admin",
    ("POST", "/users/{user_id}/reset-password"): "server.admin",
    ("GET", "/categories"): "server.admin",
    ("POST", "/categories"): "server.admin",
    ("POST", "/categories/{name}/delete"): "server.admin",
    ("POST", "/hubs/{hub_id}/projects"): "hub.admin",
    ("GET", "/hubs/{hub_id}"): "hub.admin",
    ("POST", "/hubs/{hub_id}/name"): "hub.admin",
    ("POST", "/hubs/{hub_id}/content-safety"): "hub.admin",
    ("POST", "/hubs/{hub_id}/content-filter-policy"): "hub.admin",
    ("POST", "/hubs/{hub_id}/quotas"): "hub.admin",
    ("POST", "/hubs/{hub_id}/prices"): "hub.admin",
    ("POST", "/hubs/{hub_id}/secrets"): "hub.admin",
    ("POST", "/hubs/{hub_id}/secrets/{name}/delete"): "hub.admin",
    ("GET", "/catalog"): "project.read",
    ("GET", "/data"): "project.read",
    ("POST", "/data"): "data.write",
    ("GET", "/data/{file_id}"): "project.read",
    ("GET", "/files/{file_id}/download"): "project.read",
    ("POST", "/data/{file_id}/split"): "data.write",
    ("POST", "/data/{file_id}/convert"): "data.write",
    ("GET", "/fine-tune"): "jobs.write",
    ("POST", "/fine-tune"): "jobs.write",
    ("GET", "/jobs"): "project.read",
    ("GET", "/jobs/{job_id}"): "project.read",
    ("GET", "/jobs/{job_id}/live"): "project.read",
    ("POST", "/jobs/{job_id}/cancel"): "jobs.write",
    ("POST", "/jobs/{job_id}/pause"): "jobs.write",
    ("POST", "/jobs/{job_id}/resume"): "jobs.write",
    ("GET", "/sweeps/{sweep_id}"): "project.read",
    ("POST", "/sweeps/{sweep_id}/cancel"): "jobs.write",
    ("GET", "/models"): "project.read",
    ("POST", "/models/deploy"): "deployments.write",
    ("POST", "/models/delete"): "models.write",
    ("POST", "/models/export"): "models.write",
    ("GET", "/deployments"): "project.read",
    ("GET", "/deployments/{deployment_id}"): "project.read",
    ("POST", "/deployments/{deployment_id}/delete"): "deployments.write",
    ("POST", "/deployments/{deployment_id}/content-filter"): "deployments.write",
    ("POST", "/deployments/{deployment_id}/content-filter-policy"): "deployments.write",
    ("GET", "/blocklists"): "project.read",
    ("POST", "/blocklists"): "deployments.write",
    ("GET", "/blocklists/{name}"): "project.read",
    ("POST", "/blocklists/{name}"): "deployments.write",
    ("POST", "/blocklists/{name}/items"): "deployments.write",
    ("POST", "/blocklists/{name}/items/{item_id}/remove"): "deployments.write",
    ("POST", "/blocklists/{name}/delete"): "deployments.write",
    ("GET", "/playground"): "deployments.call",
    ("POST", "/playground"): "deployments.call",
    ("POST", "/playground/stream"): "deployments.call",
    ("GET", "/members"): "project.read",
    ("POST", "/members"): "members.manage",
    ("POST", "/members/{user_id}"): "members.manage",
    ("POST", "/members/{user_id}/remove"): "members.manage",
    ("POST", "/service-accounts"): "keys.manage",
    ("POST", "/service-accounts/{service_account_id}/delete"): "keys.manage",
    ("GET", "/audit"): "audit.read",
    ("GET", "/usage"): "project.read",
    ("POST", "/keys"): "keys.self",
    ("POST", "/keys/{key_id}/revoke"): "keys.self",
}

# The forms that carry a data file: the request guard (api.limits) caps their bodies at the upload limit, not
# the JSON limit of every other request.
UPLOAD_FORMS = {("POST", "/data"), ("POST", "/fine-tune")}


def mount(app) -> None:
    """Add the portal's pages and its error pages (sign-in redirect, CSRF refusal, forbidden) to the app."""
    from tempering.web import admin, blocklists, hubs, management, pages, serving, sweeps, tuning
    from tempering.web.render import install_handlers

    for module in (pages, tuning, sweeps, serving, blocklists, management, hubs, admin):
        app.include_router(module.router)
    install_handlers(app)
