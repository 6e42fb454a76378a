"""``/v1/organization/…`` and ``/v1/me``: hubs, projects, their users, API keys and service accounts, users,
hub secrets and the audit log, in the shapes of OpenAI's Administration API where it has them. Who may call
each route is ``api.permissions``; the rules are ``services.projects`` and ``services.accounts``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Request

from tempering.api.deps import SessionDep
from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol import ListPage
from tempering.api.protocol_access import (
    AuditLogEntry,
    Deleted,
    HubCreate,
    HubObject,
    HubUpdate,
    KeyCreate,
    KeyOwner,
    Me,
    Membership,
    PasswordReset,
    ProjectApiKey,
    ProjectCreate,
    ProjectDeleted,
    ProjectObject,
    ProjectRateLimit,
    ProjectRateLimitUpdate,
    ProjectUpdate,
    ProjectUser,
    ProjectUserAdd,
    ProjectUserUpdate,
    SecretObject,
    SecretWrite,
    ServiceAccountCreate,
    ServiceAccountKey,
    ServiceAccountObject,
    UserCreate,
    UserObject,
    UserUpdate,
)
from tempering.services import access, accounts, audit, deployments, retention
from tempering.services import projects as service
from tempering.store.models import ApiKey, Deployment, Hub, Project, ProjectMember, ServiceAccount, User
from tempering.store.quotas import effective_quotas

router = APIRouter(tags=["organization"], responses=ERROR_RESPONSES)
ORG = "/v1/organization"
PROJECT = ORG + "/projects/{project_id}"


def hub_wire(hub: Hub) -> HubObject:
    return HubObject(id=hub.id, name=hub.name, settings=hub.settings or {}, created_at=hub.created_at)


def project_wire(project: Project, role: str | None = None, session=None) -> ProjectObject:
    """The project; with ``session``, also the quotas in force."""
    effective = asdict(effective_quotas(session, project.id)) if session is not None else None
    return ProjectObject(id=project.id, name=project.name, hub_id=project.hub_id, created_at=project.created_at,
                         status=project.status, archived_at=project.deleted_at, quotas=project.quotas or {},
                         effective_quotas=effective, role=role)


def rate_limit_wire(d: Deployment) -> ProjectRateLimit:
    return ProjectRateLimit(id=deployments.RATE_LIMIT_PREFIX + d.id, model=d.name,
                            max_requests_per_1_minute=d.max_requests_per_1_minute,
                            max_tokens_per_1_minute=d.max_tokens_per_1_minute)


def user_wire(user: User, password: str | None = None) -> UserObject:
    return UserObject(id=user.id, username=user.username, name=user.name, email=user.email,
                      is_admin=user.is_admin, disabled=user.disabled, locale=user.locale, added_at=user.created_at,
                      password=password)


def member_wire(user: User, member: ProjectMember) -> ProjectUser:
    return ProjectUser(id=user.id, name=user.name or user.username, username=user.username, email=user.email,
                       role=member.role, added_at=member.created_at)


def key_wire(session, row: ApiKey, value: str | None = None) -> ProjectApiKey:
    if row.service_account_id:
        account = session.get(ServiceAccount, row.service_account_id)
        owner = KeyOwner(type="service_account", id=row.service_account_id, name=account.name if account else None)
    else:
        user = session.get(User, row.user_id) if row.user_id else None
        owner = KeyOwner(type="user", id=row.user_id, name=user.username if user else None)
    return ProjectApiKey(id=row.id, name=row.name, redacted_value=f"{row.prefix}…", role=row.role,
                         created_at=row.created_at, expires_at=row.expires_at, last_used_at=row.last_used_at,
                         owner=owner, value=value)


def account_wire(account: ServiceAccount, key: ApiKey | None = None, value: str | None = None):
    api_key = ServiceAccountKey(id=key.id, name=key.name, value=value, created_at=key.created_at) if key else None
    return ServiceAccountObject(id=account.id, name=account.name, role=account.role, created_at=account.created_at,
                                api_key=api_key)


def _page(items: list) -> ListPage:
    return ListPage(data=items, first_id=items[0].id if items else None, last_id=items[-1].id if items else None)


# -- who am I -----------------------------------------------------------------------------------------------


@router.get("/v1/me", response_model=Me)
def me(caller: CallerDep, session: SessionDep) -> Me:
    """The caller: their user (or service account), the project and role of the key, and every project they
    have a role in."""
    user = session.get(User, caller.user_id) if caller.user_id else None
    return Me(user=user_wire(user) if user else None, service_account_id=caller.service_account_id,
              project_id=caller.project_id, role=caller.role,
              projects=[Membership(project=project_wire(p, r), role=r) for p, r in service.projects_of(session, caller)])


# -- hubs ---------------------------------------------------------------------------------------------------


@router.get(ORG + "/hubs", response_model=ListPage[HubObject])
def list_hubs(caller: CallerDep, session: SessionDep) -> ListPage[HubObject]:
    return _page([hub_wire(h) for h in service.hubs_of(session, caller)])


@router.post(ORG + "/hubs", response_model=HubObject)
def create_hub(body: HubCreate, caller: CallerDep, session: SessionDep) -> HubObject:
    return hub_wire(service.create_hub(session, body.name, caller, body.settings))


@router.get(ORG + "/hubs/{hub_id}", response_model=HubObject)
def get_hub(hub_id: str, caller: CallerDep, session: SessionDep) -> HubObject:
    return hub_wire(service.get_hub(session, hub_id))


@router.post(ORG + "/hubs/{hub_id}", response_model=HubObject)
def update_hub(hub_id: str, body: HubUpdate, caller: CallerDep, session: SessionDep) -> HubObject:
    hub = service.get_hub(session, hub_id)
    return hub_wire(service.update_hub(session, hub, caller, name=body.name, settings=body.settings))


@router.post(ORG + "/hubs/{hub_id}/projects", response_model=ProjectObject)
def create_project_in_hub(hub_id: str, body: ProjectCreate, caller: CallerDep, session: SessionDep) -> ProjectObject:
    project = service.create_project(session, service.get_hub(session, hub_id), body.name, caller, body.quotas)
    return project_wire(project, "owner")


@router.get(ORG + "/hubs/{hub_id}/secrets", response_model=ListPage[SecretObject])
def list_secrets(hub_id: str, caller: CallerDep, session: SessionDep) -> ListPage[SecretObject]:
    """The hub's secrets by name; their values are never returned."""
    rows = service.secret_names(session, service.get_hub(session, hub_id).id)
    return ListPage(data=[SecretObject(name=r.name, created_at=r.created_at, updated_at=r.updated_at) for r in rows])


@router.put(ORG + "/hubs/{hub_id}/secrets/{name}", response_model=SecretObject)
def put_secret(hub_id: str, name: str, body: SecretWrite, request: Request, caller: CallerDep,
               session: SessionDep) -> SecretObject:
    """Set or rotate (replace) a secret; write-only."""
    row = service.set_secret(session, service.get_hub(session, hub_id), name, body.value,
                             request.app.state.cipher, caller)
    return SecretObject(name=row.name, created_at=row.created_at, updated_at=row.updated_at)


@router.delete(ORG + "/hubs/{hub_id}/secrets/{name}", response_model=Deleted)
def delete_secret(hub_id: str, name: str, caller: CallerDep, session: SessionDep) -> Deleted:
    service.delete_secret(session, service.get_hub(session, hub_id), name, caller)
    return Deleted(object="organization.hub.secret.deleted", id=name)


# -- users (server administrators) --------------------------------------------------------------------------


@router.get(ORG + "/users", response_model=ListPage[UserObject])
def list_users(caller: CallerDep, session: SessionDep) -> ListPage[UserObject]:
    return _page([user_wire(u) for u in accounts.users(session)])


@router.post(ORG + "/users", response_model=UserObject)
def create_user(body: UserCreate, caller: CallerDep, session: SessionDep) -> UserObject:
    """A new user; the answer carries the password (the one given, or a generated one) this once."""
    user, password = accounts.create_user(session, body.username, body.password, name=body.name, email=body.email,
                                          is_admin=body.is_admin, caller=caller)
    return user_wire(user, password if body.password is None else None)


@router.get(ORG + "/users/{user_id}", response_model=UserObject)
def get_user(user_id: str, caller: CallerDep, session: SessionDep) -> UserObject:
    return user_wire(accounts.get_user(session, user_id))


@router.post(ORG + "/users/{user_id}", response_model=UserObject)
def update_user(user_id: str, body: UserUpdate, caller: CallerDep, session: SessionDep) -> UserObject:
    user = accounts.update_user(session, accounts.get_user(session, user_id), caller,
                                **body.model_dump(exclude_unset=True))
    return user_wire(user)


@router.post(ORG + "/users/{user_id}/password", response_model=UserObject)
def reset_password(user_id: str, body: PasswordReset, caller: CallerDep, session: SessionDep) -> UserObject:
    user = accounts.get_user(session, user_id)
    password = accounts.reset_password(session, user, body.password, caller=caller)
    return user_wire(user, password if body.password is None else None)


# -- projects -----------------------------------------------------------------------------------------------


@router.get(ORG + "/projects", response_model=ListPage[ProjectObject])
def list_projects(caller: CallerDep, session: SessionDep) -> ListPage[ProjectObject]:
    """The projects the caller has a role in, with that role."""
    return _page([project_wire(p, r) for p, r in service.projects_of(session, caller)])


@router.post(ORG + "/projects", response_model=ProjectObject)
def create_project(body: ProjectCreate, caller: CallerDep, session: SessionDep) -> ProjectObject:
    """A new project in the hub of the caller's current project (``/hubs/{hub_id}/projects`` names another)."""
    hub = service.get_hub(session, access.project_of(session, caller.project_id).hub_id)
    return project_wire(service.create_project(session, hub, body.name, caller, body.quotas), "owner")


@router.get(PROJECT, response_model=ProjectObject)
def get_project(project_id: str, caller: CallerDep, session: SessionDep) -> ProjectObject:
    return project_wire(access.project_of(session, caller.project_id), caller.role, session)


@router.post(PROJECT, response_model=ProjectObject)
def update_project(project_id: str, body: ProjectUpdate, caller: CallerDep, session: SessionDep) -> ProjectObject:
    """Rename the project or change its quotas (each key given replaces that quota; null removes the project's
    own, so its hub's default applies): ``concurrent_jobs``, ``trained_tokens_per_day``, ``stored_bytes``,
    ``deployments``, whole numbers from 0 (docs/quotas.md)."""
    project = service.update_project(session, access.project_of(session, caller.project_id), caller,
                                     name=body.name, quotas=body.quotas)
    session.flush()
    return project_wire(project, caller.role, session)


# -- rate limits (one per deployment) -----------------------------------------------------------------------


@router.get(PROJECT + "/rate_limits", response_model=ListPage[ProjectRateLimit])
def list_rate_limits(project_id: str, caller: CallerDep, session: SessionDep) -> ListPage[ProjectRateLimit]:
    """The project's rate limits in OpenAI's shape: one per live deployment (``model``: its name)."""
    return _page([rate_limit_wire(d) for d in deployments.rate_limits(session, caller.project_id)])


@router.get(PROJECT + "/rate_limits/{rate_limit_id}", response_model=ProjectRateLimit)
def get_rate_limit(project_id: str, rate_limit_id: str, caller: CallerDep, session: SessionDep) -> ProjectRateLimit:
    return rate_limit_wire(deployments.rate_limit(session, caller.project_id, rate_limit_id))


@router.post(PROJECT + "/rate_limits/{rate_limit_id}", response_model=ProjectRateLimit)
def update_rate_limit(project_id: str, rate_limit_id: str, body: ProjectRateLimitUpdate, caller: CallerDep,
                      session: SessionDep) -> ProjectRateLimit:
    """Change a deployment's requests or tokens per minute; its next request counts against them."""
    return rate_limit_wire(deployments.set_rate_limit(session, caller.project_id, rate_limit_id,
                                                      requests=body.max_requests_per_1_minute,
                                                      tokens=body.max_tokens_per_1_minute))


@router.delete(PROJECT, response_model=ProjectDeleted)
def delete_project(project_id: str, request: Request, caller: CallerDep, session: SessionDep,
                   force: Annotated[bool, Query(description="Delete even while a deployment of the project has "
                                                "served requests in the last 15 minutes")] = False,
                   ) -> ProjectDeleted:
    """Delete the project: its files, runs (models and checkpoints), deployments and webhooks go, its unfinished
    jobs are cancelled; its audit log and usage stay. Every key of the project is refused from then on."""
    request.app.state.monitor.flush()  # the serving check sees every request answered so far
    state = request.app.state
    removed = retention.delete_project(session, caller, access.project_of(session, caller.project_id),
                                       store=state.store, settings=state.settings, force=force)
    return ProjectDeleted(id=project_id, removed=removed)


@router.get(PROJECT + "/users", response_model=ListPage[ProjectUser])
def list_members(project_id: str, caller: CallerDep, session: SessionDep) -> ListPage[ProjectUser]:
    return _page([member_wire(u, m) for u, m in service.members(session, caller.project_id)])


@router.post(PROJECT + "/users", response_model=ProjectUser)
def add_member(project_id: str, body: ProjectUserAdd, caller: CallerDep, session: SessionDep) -> ProjectUser:
    return member_wire(*service.add_member(session, caller, body.user_id, body.role))


@router.get(PROJECT + "/users/{user_id}", response_model=ProjectUser)
def get_member(project_id: str, user_id: str, caller: CallerDep, session: SessionDep) -> ProjectUser:
    return member_wire(*service.member(session, caller.project_id, user_id))


@router.post(PROJECT + "/users/{user_id}", response_model=ProjectUser)
def change_member(project_id: str, user_id: str, body: ProjectUserUpdate, caller: CallerDep,
                  session: SessionDep) -> ProjectUser:
    return member_wire(*service.change_member(session, caller, user_id, body.role))


@router.delete(PROJECT + "/users/{user_id}", response_model=Deleted)
def remove_member(project_id: str, user_id: str, caller: CallerDep, session: SessionDep) -> Deleted:
    service.remove_member(session, caller, user_id)
    return Deleted(object="organization.project.user.deleted", id=user_id)


# -- API keys and service accounts --------------------------------------------------------------------------


@router.get(PROJECT + "/api_keys", response_model=ListPage[ProjectApiKey])
def list_keys(project_id: str, caller: CallerDep, session: SessionDep) -> ListPage[ProjectApiKey]:
    """The project's live keys: all of them for an Owner, else the caller's own."""
    return _page([key_wire(session, r) for r in service.visible_keys(session, caller)])


@router.post(PROJECT + "/api_keys", response_model=ProjectApiKey)
def create_key(project_id: str, body: KeyCreate, caller: CallerDep, session: SessionDep) -> ProjectApiKey:
    """A key of the caller's own; the answer carries it (``value``) this once."""
    row, value = service.create_user_key(session, caller, body.name, body.role, body.expires_at)
    return key_wire(session, row, value)


@router.get(PROJECT + "/api_keys/{key_id}", response_model=ProjectApiKey)
def get_key(project_id: str, key_id: str, caller: CallerDep, session: SessionDep) -> ProjectApiKey:
    return key_wire(session, service.visible_key(session, caller, key_id))


@router.delete(PROJECT + "/api_keys/{key_id}", response_model=Deleted)
def revoke_key(project_id: str, key_id: str, caller: CallerDep, session: SessionDep) -> Deleted:
    """Revoke a key (one's own, or any as Owner): it is refused (401) from the next request on."""
    service.revoke_key(session, caller, key_id)
    return Deleted(object="organization.project.api_key.deleted", id=key_id)


@router.get(PROJECT + "/service_accounts", response_model=ListPage[ServiceAccountObject])
def list_service_accounts(project_id: str, caller: CallerDep, session: SessionDep) -> ListPage[ServiceAccountObject]:
    return _page([account_wire(a) for a in service.service_accounts(session, caller.project_id)])


@router.post(PROJECT + "/service_accounts", response_model=ServiceAccountObject)
def create_service_account(project_id: str, body: ServiceAccountCreate, caller: CallerDep,
                           session: SessionDep) -> ServiceAccountObject:
    """A service account and its first key (``api_key.value``, shown this once)."""
    account, row, value = service.create_service_account(session, caller, body.name, body.role)
    return account_wire(account, row, value)


@router.get(PROJECT + "/service_accounts/{service_account_id}", response_model=ServiceAccountObject)
def get_service_account(project_id: str, service_account_id: str, caller: CallerDep,
                        session: SessionDep) -> ServiceAccountObject:
    return account_wire(service.service_account(session, caller.project_id, service_account_id))


@router.delete(PROJECT + "/service_accounts/{service_account_id}", response_model=Deleted)
def delete_service_account(project_id: str, service_account_id: str, caller: CallerDep,
                           session: SessionDep) -> Deleted:
    """Delete a service account; its keys are revoked with it."""
    service.delete_service_account(session, caller, service_account_id)
    return Deleted(object="organization.project.service_account.deleted", id=service_account_id)


# -- audit log ----------------------------------------------------------------------------------------------


@router.get(PROJECT + "/audit_logs", response_model=ListPage[AuditLogEntry])
def audit_logs(project_id: str, caller: CallerDep, session: SessionDep,
               after: Annotated[str | None, Query(max_length=40, description="An entry's id: older entries")] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               type: Annotated[str | None, Query(max_length=64, description="Only this action")] = None,
               ) -> ListPage[AuditLogEntry]:
    """The project's audit log, newest first."""
    seq = int(after.removeprefix("audit-")) if after and after.removeprefix("audit-").isdigit() else None
    rows = audit.events(session, caller.project_id, after=seq, limit=limit + 1, action=type)
    data = [AuditLogEntry(id=e.id, type=e.action, effective_at=e.created_at, project_id=e.project_id,
                          actor={"user_id": e.actor_user_id, "api_key_id": e.actor_key_id, "address": e.address},
                          target=e.target, details=e.details or {}) for e in rows[:limit]]
    page = _page(data)
    page.has_more = len(rows) > limit
    return page
