"""Hubs and projects, their members, API keys and service accounts, and hub secrets.

Who may call each of these is decided before they run (``services.access``); these functions keep the rules
that depend on the objects themselves: a key is listed and revoked by its holder or an Owner, a project keeps
at least one Owner, a name is unique where it must be. Each change is recorded in the audit log.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tempering.errors import ConflictError, TemperingError, not_found
from tempering.services import audit
from tempering.services.access import Caller, check_role, create_key, project_of, project_role
from tempering.services.accounts import get_user
from tempering.store import usage
from tempering.store.models import (
    ApiKey,
    Hub,
    HubMember,
    HubSecret,
    Project,
    ProjectMember,
    ServiceAccount,
    User,
    looks_like_id,
    now,
)
from tempering.store.quotas import check_quotas


def _name(value: str, param: str = "name", limit: int = 200) -> str:
    value = value.strip()
    if not value or len(value) > limit:
        raise TemperingError(f"a {param} is 1-{limit} characters", param=param, code="invalid_name")
    return value


# -- hubs ---------------------------------------------------------------------------------------------------


def _check_hub_settings(settings: dict | None) -> dict:
    """The settings, checked where their shape is known: ``default_quotas`` (the projects' quotas unless they
    set their own), ``prices`` (the price table, ``services.usage``), ``content_safety`` (the classifiers
    behind the projects' content filters: ``services.filtering.check_backend``, stored in canonical form) and
    ``content_filter_policy`` (the policy of the projects' deployments that set none:
    ``services.filtering.check_hub_policy``)."""
    settings = dict(settings or {})
    if settings.get("default_quotas") is not None:
        check_quotas(settings["default_quotas"], "settings.default_quotas", allow_null=False)
    if settings.get("prices") is not None:
        usage.check_prices(settings["prices"])
    if settings.get("content_filter_policy") is not None:
        from tempering.services.filtering import check_hub_policy

        settings["content_filter_policy"] = check_hub_policy(settings["content_filter_policy"])
    if settings.get("content_safety") is not None:
        from tempering.services.filtering import check_backend
        from tempering.settings import get_settings

        settings["content_safety"] = check_backend(settings["content_safety"], get_settings().upstream_allowed_urls)
    return settings


def create_hub(session: Session, name: str, caller: Caller, settings: dict | None = None) -> Hub:
    """A new hub; its creator (a server administrator) becomes its admin."""
    hub = Hub(name=_name(name), settings=_check_hub_settings(settings))
    session.add(hub)
    session.flush()
    if caller.user_id:
        session.add(HubMember(hub_id=hub.id, user_id=caller.user_id, role="admin"))
    audit.record(session, "hub.created", caller=caller, project_id=None, hub_id=hub.id, target=hub.id, name=name)
    return hub


def get_hub(session: Session, hub_id: str) -> Hub:
    hub = session.get(Hub, hub_id) if looks_like_id(hub_id) else None
    if hub is None:
        raise not_found("hub", hub_id, "hub_id")
    return hub


def hubs_of(session: Session, caller: Caller) -> list[Hub]:
    """The hubs a caller belongs to (all of them for a server administrator)."""
    if caller.is_admin:
        return list(session.scalars(select(Hub).order_by(Hub.created_at)))
    if not caller.user_id:
        project = session.get(Project, caller.project_id)
        return [session.get(Hub, project.hub_id)] if project and project.hub_id else []
    return list(session.scalars(select(Hub).join(HubMember, HubMember.hub_id == Hub.id)
                                .where(HubMember.user_id == caller.user_id).order_by(Hub.created_at)))


def update_hub(session: Session, hub: Hub, caller: Caller, *, name: str | None = None,
               settings: dict | None = None) -> Hub:
    """Rename a hub or replace some of its settings (each key given replaces that setting; null removes it)."""
    if name is not None:
        hub.name = _name(name)
    if settings is not None:
        settings = _check_hub_settings(settings)
        merged = dict(hub.settings or {})
        for key, value in settings.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        hub.settings = merged
    audit.record(session, "hub.updated", caller=caller, project_id=None, hub_id=hub.id, target=hub.id,
                 fields=sorted((settings or {}).keys()) + (["name"] if name is not None else []))
    return hub


def set_hub_member(session: Session, hub: Hub, user_id: str, role: str) -> None:
    if role not in ("admin", "member"):
        raise TemperingError("a hub role is 'admin' or 'member'", param="role", code="invalid_role")
    member = session.get(HubMember, (hub.id, user_id))
    if member is None:
        session.add(HubMember(hub_id=hub.id, user_id=user_id, role=role))
    else:
        member.role = role


# -- projects -----------------------------------------------------------------------------------------------


def create_project(session: Session, hub: Hub, name: str, caller: Caller | None = None,
                   quotas: dict | None = None) -> Project:
    """A new project in a hub; the user creating it (a hub admin) is its Owner. Names are unique among the
    hub's live projects."""
    quotas = {k: v for k, v in check_quotas(quotas).items() if v is not None}
    name = _name(name)
    taken = session.scalars(select(Project.id).where(Project.hub_id == hub.id).where(Project.status == "active")
                            .where(Project.name == name)).first()
    if taken is not None:
        raise ConflictError(f"the hub already has a project named '{name}'", param="name", code="project_exists")
    project = Project(hub_id=hub.id, name=name, quotas=quotas)
    session.add(project)
    session.flush()
    if caller is not None and caller.user_id:
        session.add(ProjectMember(project_id=project.id, user_id=caller.user_id, role="owner"))
    if caller is not None:
        audit.record(session, "project.created", caller=caller, project_id=project.id, hub_id=hub.id,
                     target=project.id, name=project.name)
    return project


def projects_of(session: Session, caller: Caller) -> list[tuple[Project, str]]:
    """The active projects a caller has a role in, with that role (a service account's key: its own)."""
    if not caller.user_id:
        return [(project_of(session, caller.project_id), caller.role)]
    out = []
    for project in session.scalars(select(Project).where(Project.status == "active").order_by(Project.created_at)):
        role = project_role(session, caller.user_id, project.id)
        if role is not None:
            out.append((project, role))
    return out


def update_project(session: Session, project: Project, caller: Caller, *, name: str | None = None,
                   quotas: dict | None = None) -> Project:
    if name is not None:
        project.name = _name(name)
    if quotas is not None:
        check_quotas(quotas)  # known keys, whole numbers; null removes an override (the hub's default applies)
        merged = dict(project.quotas or {})
        merged.update({k: v for k, v in quotas.items() if v is not None})
        for key in [k for k, v in quotas.items() if v is None]:
            merged.pop(key, None)
        project.quotas = merged
    audit.record(session, "project.updated", caller=caller, project_id=project.id, target=project.id,
                 name=name, quotas=quotas)
    return project


# -- members ------------------------------------------------------------------------------------------------


def members(session: Session, project_id: str) -> list[tuple[User, ProjectMember]]:
    rows = session.execute(select(User, ProjectMember).join(ProjectMember, ProjectMember.user_id == User.id)
                           .where(ProjectMember.project_id == project_id).order_by(ProjectMember.created_at))
    return [(user, member) for user, member in rows]


def member(session: Session, project_id: str, user_id: str) -> tuple[User, ProjectMember]:
    row = session.get(ProjectMember, (project_id, user_id)) if looks_like_id(user_id) else None
    if row is None:
        raise not_found("project user", user_id, "user_id")
    return session.get(User, user_id), row


def add_member(session: Session, caller: Caller, user_id: str, role: str) -> tuple[User, ProjectMember]:
    user = get_user(session, user_id)
    role = check_role(role)
    if session.get(ProjectMember, (caller.project_id, user.id)) is not None:
        raise ConflictError(f"user '{user.id}' is already a member of this project", param="user_id",
                            code="member_exists")
    row = ProjectMember(project_id=caller.project_id, user_id=user.id, role=role)
    session.add(row)
    session.flush()
    audit.record(session, "member.added", caller=caller, target=user.id, role=role)
    return user, row


def _keep_an_owner(session: Session, project_id: str, leaving: str) -> None:
    owners = session.scalars(select(ProjectMember.user_id).where(ProjectMember.project_id == project_id)
                             .where(ProjectMember.role == "owner")).all()
    if owners == [leaving]:
        raise ConflictError("a project keeps at least one Owner: make someone else Owner first",
                            param="role", code="last_owner")


def change_member(session: Session, caller: Caller, user_id: str, role: str) -> tuple[User, ProjectMember]:
    user, row = member(session, caller.project_id, user_id)
    role = check_role(role)
    if row.role == "owner" and role != "owner":
        _keep_an_owner(session, caller.project_id, user.id)
    row.role = role
    audit.record(session, "member.updated", caller=caller, target=user.id, role=role)
    return user, row


def remove_member(session: Session, caller: Caller, user_id: str) -> None:
    user, row = member(session, caller.project_id, user_id)
    if row.role == "owner":
        _keep_an_owner(session, caller.project_id, user.id)
    session.delete(row)
    audit.record(session, "member.removed", caller=caller, target=user.id)


# -- API keys and service accounts --------------------------------------------------------------------------


def check_expiry(expires_at: int | None) -> int | None:
    if expires_at is not None and expires_at <= now():
        raise TemperingError("expires_at must be in the future (seconds since the epoch)", param="expires_at",
                             code="invalid_expiry")
    return expires_at


def create_user_key(session: Session, caller: Caller, name: str, role: str | None = None,
                    expires_at: int | None = None) -> tuple[ApiKey, str]:
    """A key of the caller's own in the project; its role is at most theirs (their role when none is given)."""
    if not caller.user_id:
        raise TemperingError("a service account's key cannot create keys; an Owner creates service accounts",
                             code="permission_denied", kind="forbidden")
    from tempering.services.access import lower

    role = check_role(role) if role is not None else caller.role
    if lower(role, caller.role) != role:
        raise TemperingError(f"a key's role can be at most your own ({caller.role})", param="role",
                             code="permission_denied", kind="forbidden")
    row, key = create_key(session, caller.project_id, _name(name), role, user_id=caller.user_id,
                          expires_at=check_expiry(expires_at))
    audit.record(session, "api_key.created", caller=caller, target=row.id, role=role, holder=caller.user_id)
    return row, key


def visible_keys(session: Session, caller: Caller) -> list[ApiKey]:
    """The project's live keys an caller may see: all of them for an Owner, else their own."""
    query = select(ApiKey).where(ApiKey.project_id == caller.project_id).where(ApiKey.revoked.is_(False))
    if not caller.can("keys.manage"):
        query = query.where(ApiKey.user_id == caller.user_id) if caller.user_id else query.where(
            ApiKey.id == caller.key_id)
    return list(session.scalars(query.order_by(ApiKey.created_at)))


def visible_key(session: Session, caller: Caller, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id) if looks_like_id(key_id) else None
    mine = row is not None and (row.user_id == caller.user_id if caller.user_id else row.id == caller.key_id)
    if row is None or row.revoked or row.project_id != caller.project_id or not (mine or caller.can("keys.manage")):
        raise not_found("API key", key_id, "key_id")
    return row


def revoke_key(session: Session, caller: Caller, key_id: str) -> ApiKey:
    row = visible_key(session, caller, key_id)
    row.revoked = True
    audit.record(session, "api_key.revoked", caller=caller, target=row.id)
    return row


def create_service_account(session: Session, caller: Caller, name: str,
                           role: str = "ai_developer") -> tuple[ServiceAccount, ApiKey, str]:
    """A service account of the project, with its first key (shown once)."""
    account = ServiceAccount(project_id=caller.project_id, name=_name(name), role=check_role(role))
    session.add(account)
    session.flush()
    row, key = create_key(session, caller.project_id, "Secret Key", account.role, service_account_id=account.id)
    audit.record(session, "service_account.created", caller=caller, target=account.id, role=account.role)
    return account, row, key


def service_accounts(session: Session, project_id: str) -> list[ServiceAccount]:
    return list(session.scalars(select(ServiceAccount).where(ServiceAccount.project_id == project_id)
                                .where(ServiceAccount.deleted.is_(False)).order_by(ServiceAccount.created_at)))


def service_account(session: Session, project_id: str, account_id: str) -> ServiceAccount:
    account = session.get(ServiceAccount, account_id) if looks_like_id(account_id) else None
    if account is None or account.deleted or account.project_id != project_id:
        raise not_found("service account", account_id, "service_account_id")
    return account


def delete_service_account(session: Session, caller: Caller, account_id: str) -> ServiceAccount:
    account = service_account(session, caller.project_id, account_id)
    account.deleted = True
    for row in session.scalars(select(ApiKey).where(ApiKey.service_account_id == account.id)):
        row.revoked = True
    audit.record(session, "service_account.deleted", caller=caller, target=account.id)
    return account


# -- hub secrets --------------------------------------------------------------------------------------------


def secret_names(session: Session, hub_id: str) -> list[HubSecret]:
    return list(session.scalars(select(HubSecret).where(HubSecret.hub_id == hub_id).order_by(HubSecret.name)))


def set_secret(session: Session, hub: Hub, name: str, value: str, cipher, caller: Caller) -> HubSecret:
    """Store (or replace: rotation) a hub secret, encrypted with the server key; it is never returned."""
    from tempering.services.secrets import check_secret_name

    check_secret_name(name)
    if not value or len(value) > 8192:
        raise TemperingError("a secret's value is 1-8192 characters", param="value", code="invalid_secret")
    row = session.scalars(select(HubSecret).where(HubSecret.hub_id == hub.id).where(HubSecret.name == name)).first()
    if row is None:
        row = HubSecret(hub_id=hub.id, name=name, ciphertext=cipher.encrypt(value))
        session.add(row)
        session.flush()
    else:
        row.ciphertext, row.updated_at = cipher.encrypt(value), now()
    audit.record(session, "secret.set", caller=caller, project_id=None, hub_id=hub.id, target=name)
    return row


def delete_secret(session: Session, hub: Hub, name: str, caller: Caller) -> None:
    """Delete a hub secret; refused while the hub's settings name it (the content-safety backend's key: every
    filter check of the hub would fail)."""
    row = session.scalars(select(HubSecret).where(HubSecret.hub_id == hub.id).where(HubSecret.name == name)).first()
    if row is None:
        raise not_found("secret", name, "name")
    if ((hub.settings or {}).get("content_safety") or {}).get("api_key_secret") == name:
        raise ConflictError(f"the secret {name!r} holds the key of the hub's content-safety backend; choose another "
                            "backend or secret first", param="name", code="secret_in_use")
    session.delete(row)
    audit.record(session, "secret.deleted", caller=caller, project_id=None, hub_id=hub.id, target=name)


def project_key(session: Session, project_id: str, name: str, role: str = "owner") -> str:
    """A key bound to the project alone (a new service account's), for the server's own tools and tests."""
    account = ServiceAccount(project_id=project_id, name=_name(name), role=check_role(role))
    session.add(account)
    session.flush()
    _, key = create_key(session, project_id, name, account.role, service_account_id=account.id)
    return key
