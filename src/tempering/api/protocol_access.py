"""Wire models of people and access, in the shapes of OpenAI's Administration API where it has them
(``organization.project``, ``organization.project.user``, ``organization.project.api_key``,
``organization.project.service_account``, ``organization.user``), plus hubs, secrets and the audit log."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["owner", "ai_developer", "reader", "member"]  # "member" (OpenAI's) is read as ai_developer


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HubCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    settings: dict[str, Any] = Field(default_factory=dict, description="Shared settings: prices, "
                                     "default_quotas, content_safety, content_filter_policy (docs/access.md)")


class HubUpdate(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    settings: dict[str, Any] | None = Field(default=None, description="Settings to replace (null removes one)")


class HubObject(BaseModel):
    object: Literal["organization.hub"] = "organization.hub"
    id: str
    name: str
    settings: dict[str, Any]
    created_at: int


class SecretWrite(_Strict):
    value: str = Field(min_length=1, max_length=8192, description="Write-only: never returned")


class SecretObject(BaseModel):
    object: Literal["organization.hub.secret"] = "organization.hub.secret"
    name: str
    created_at: int
    updated_at: int


class ProjectCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    quotas: dict[str, int | None] = Field(default_factory=dict)


class ProjectUpdate(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    quotas: dict[str, int | None] | None = None


class ProjectObject(BaseModel):
    object: Literal["organization.project"] = "organization.project"
    id: str
    name: str
    hub_id: str | None
    created_at: int
    archived_at: int | None = None
    status: str
    quotas: dict[str, Any] = Field(default_factory=dict, description="The project's own quotas (overrides of its "
                                   "hub's default_quotas); null in an update removes one")
    effective_quotas: dict[str, int] | None = Field(default=None, description="The quotas in force: the "
                                                    "project's, else its hub's, else the server's (docs/quotas.md)")
    role: str | None = Field(default=None, description="The caller's role in the project")


class ProjectDeleted(BaseModel):
    object: Literal["organization.project.deleted"] = "organization.project.deleted"
    id: str
    deleted: bool = True
    removed: dict[str, int] = Field(default_factory=dict, description="What went with it, by kind: files, runs, "
                                    "jobs and evaluations cancelled, deployments, webhooks")


class ProjectUserAdd(_Strict):
    user_id: str = Field(max_length=64)
    role: Role


class ProjectUserUpdate(_Strict):
    role: Role


class ProjectUser(BaseModel):
    object: Literal["organization.project.user"] = "organization.project.user"
    id: str
    name: str
    username: str
    email: str | None
    role: str
    added_at: int


class Deleted(BaseModel):
    object: str
    id: str
    deleted: bool = True


class KeyCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Role | None = Field(default=None, description="At most the caller's own role (default: it)")
    expires_at: int | None = Field(default=None, description="Seconds since the epoch; none: never")


class KeyOwner(BaseModel):
    type: Literal["user", "service_account"]
    id: str | None
    name: str | None = None


class ProjectApiKey(BaseModel):
    object: Literal["organization.project.api_key"] = "organization.project.api_key"
    id: str
    name: str
    redacted_value: str
    role: str
    created_at: int
    expires_at: int | None
    last_used_at: int | None
    owner: KeyOwner
    value: str | None = Field(default=None, description="The key itself: only in the answer that creates it")


class ServiceAccountCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Role = "ai_developer"


class ServiceAccountKey(BaseModel):
    object: Literal["organization.project.service_account.api_key"] = "organization.project.service_account.api_key"
    id: str
    name: str
    value: str
    created_at: int


class ServiceAccountObject(BaseModel):
    object: Literal["organization.project.service_account"] = "organization.project.service_account"
    id: str
    name: str
    role: str
    created_at: int
    api_key: ServiceAccountKey | None = None


class UserCreate(_Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str | None = Field(default=None, max_length=1024, description="Default: a generated one, "
                                 "returned once")
    name: str = Field(default="", max_length=200)
    email: str | None = Field(default=None, max_length=320)
    is_admin: bool = False


class UserUpdate(_Strict):
    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    is_admin: bool | None = None
    disabled: bool | None = None
    locale: Literal["en", "id"] | None = None


class PasswordReset(_Strict):
    password: str | None = Field(default=None, max_length=1024, description="Default: a generated one")


class UserObject(BaseModel):
    object: Literal["organization.user"] = "organization.user"
    id: str
    username: str
    name: str
    email: str | None
    is_admin: bool
    disabled: bool
    locale: str
    added_at: int
    password: str | None = Field(default=None, description="Only in the answer that creates or resets it")


class Membership(BaseModel):
    project: ProjectObject
    role: str


class Me(BaseModel):
    object: Literal["organization.me"] = "organization.me"
    user: UserObject | None
    service_account_id: str | None
    project_id: str
    role: str
    projects: list[Membership]


class AuditLogEntry(BaseModel):
    object: Literal["organization.audit_log"] = "organization.audit_log"
    id: str
    type: str
    effective_at: int
    project_id: str | None
    actor: dict[str, Any]
    target: str | None
    details: dict[str, Any]


class ProjectRateLimit(BaseModel):
    """OpenAI's project rate limit; here one per deployment (``model``: the name it is called by)."""

    object: Literal["project.rate_limit"] = "project.rate_limit"
    id: str
    model: str
    max_requests_per_1_minute: int
    max_tokens_per_1_minute: int


class ProjectRateLimitUpdate(_Strict):
    max_requests_per_1_minute: int | None = Field(default=None, ge=1, le=2**40)
    max_tokens_per_1_minute: int | None = Field(default=None, ge=1, le=2**40)
