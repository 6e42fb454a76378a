"""People: users and their passwords, signing in (throttled), and the server's first start.

Passwords are hashed with argon2id through ``pwdlib`` (its recommended parameters), never by hand. Signing in
is throttled per user and per client address with the ``limits`` library: past ``SIGN_IN_FAILURES`` failures in
``SIGN_IN_WINDOW`` seconds, further attempts for that user (or from that address) are refused until the window
moves on, whatever the password (a temporary lockout). The limiter's storage is in-process by default, Redis
with ``TEMPERING_RATE_LIMIT_URL`` (shared by several API processes).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tempering.errors import ConflictError, RateLimitedError, TemperingError, not_found
from tempering.services import audit
from tempering.services.access import create_key
from tempering.store.models import Hub, HubMember, Project, ProjectMember, User, looks_like_id

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 10
SIGN_IN_FAILURES = 5  # per user, per window
SIGN_IN_FAILURES_PER_ADDRESS = 20
SIGN_IN_WINDOW = 15 * 60  # seconds


@lru_cache(maxsize=1)
def _hasher():
    from pwdlib import PasswordHash

    return PasswordHash.recommended()


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def new_password() -> str:
    return secrets.token_urlsafe(15)


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise TemperingError(f"a password needs at least {MIN_PASSWORD} characters", param="password",
                             code="weak_password")
    if len(password) > 1024:
        raise TemperingError("a password may have at most 1024 characters", param="password",
                             code="invalid_password")
    return password


def check_username(username: str) -> str:
    if not USERNAME.fullmatch(username):
        raise TemperingError("a username is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter "
                             "or digit", param="username", code="invalid_username")
    return username


def user_by_name(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(func.lower(User.username) == username.lower())).first()


def get_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id) if looks_like_id(user_id) else None
    if user is None:
        raise not_found("user", user_id, "user_id")
    return user


def create_user(session: Session, username: str, password: str | None = None, *, name: str = "",
                email: str | None = None, is_admin: bool = False, caller=None) -> tuple[User, str]:
    """A new user; returns it and its password (the one given, or a generated one to show once)."""
    check_username(username)
    if user_by_name(session, username) is not None:
        raise ConflictError(f"a user named '{username}' exists", param="username", code="user_exists")
    password = check_password(password) if password is not None else new_password()
    user = User(username=username, password_hash=hash_password(password), name=name, email=email,
                is_admin=is_admin)
    session.add(user)
    session.flush()
    audit.record(session, "user.created", caller=caller, project_id=None, target=user.id, username=username)
    return user, password


def reset_password(session: Session, user: User, password: str | None = None, *, caller=None) -> str:
    """Set a new password (a generated one when none is given, to show once); portal sessions signed before it
    end (``session_epoch``). A caller resets other users' passwords: their own is changed with the current one
    (``change_password``), so a borrowed session cannot take the account over."""
    if caller is not None and getattr(caller, "user_id", None) == user.id:
        raise TemperingError("change your own password on your account page (it asks for the current one)",
                             param="user_id", code="own_password", kind="forbidden")
    password = check_password(password) if password is not None else new_password()
    _set_password(user, password)
    audit.record(session, "user.password_reset", caller=caller, project_id=None, target=user.id)
    return password


def _set_password(user: User, password: str) -> None:
    """Store a checked password's hash; portal sessions signed before it end (``session_epoch``)."""
    user.password_hash = hash_password(password)
    user.session_epoch += 1


def users(session: Session) -> list[User]:
    """Every user of the server, oldest first."""
    return list(session.scalars(select(User).order_by(User.created_at)))


def update_user(session: Session, user: User, caller=None, **fields) -> User:
    """Change a user's name, email, locale, administrator standing or disabled state (disabling one ends their
    sessions and stops their keys). No one disables themselves or gives up their own administrator standing
    (the server would be left without the administrator who could undo it)."""
    acting = getattr(caller, "user_id", None)
    if acting == user.id and (fields.get("disabled") or fields.get("is_admin") is False):
        raise TemperingError("you cannot disable yourself or drop your own administrator standing; another "
                             "administrator can", param="user_id", code="self_lockout", kind="forbidden")
    if fields.get("disabled") or fields.get("is_admin") is False:
        # two administrators demoting each other at once would each still see the other: the enabled
        # administrators' rows are locked until this transaction ends (PostgreSQL; SQLite serialises writers)
        session.execute(select(User.id).where(User.is_admin.is_(True), User.disabled.is_(False))
                        .order_by(User.id).with_for_update())  # one order: two of these cannot deadlock
    for field in ("name", "email", "locale", "is_admin", "disabled"):
        if fields.get(field) is not None:
            setattr(user, field, fields[field])
    if fields.get("disabled"):
        user.session_epoch += 1
    session.flush()
    if not session.scalars(select(User.id).where(User.is_admin.is_(True), User.disabled.is_(False)).limit(1)).first():
        raise TemperingError("the server must keep an enabled administrator; make another one first",
                             param="user_id", code="last_administrator", kind="conflict")
    audit.record(session, "user.updated", caller=caller, project_id=None, target=user.id,
                 fields=sorted(k for k, v in fields.items() if v is not None),
                 changes={k: v for k, v in fields.items() if k in ("is_admin", "disabled") and v is not None})
    return user


class SignInThrottle:
    """Failed sign-ins counted per user and per address in a moving window (``limits``)."""

    def __init__(self, storage_url: str | None = None):
        from limits import RateLimitItemPerSecond, storage, strategies

        self.storage = storage.storage_from_string(storage_url or "memory://")
        self.limiter = strategies.MovingWindowRateLimiter(self.storage)
        self.per_user = RateLimitItemPerSecond(SIGN_IN_FAILURES, SIGN_IN_WINDOW)
        self.per_address = RateLimitItemPerSecond(SIGN_IN_FAILURES_PER_ADDRESS, SIGN_IN_WINDOW)

    def _keys(self, username: str, address: str | None):
        yield self.per_user, "signin-user", username.lower()
        if address:
            yield self.per_address, "signin-addr", address

    def locked_for(self, username: str, address: str | None) -> float:
        """Seconds until another attempt is allowed (0: now)."""
        import time

        wait = 0.0
        for item, *key in self._keys(username, address):
            if not self.limiter.test(item, *key):
                reset, _ = self.limiter.get_window_stats(item, *key)
                wait = max(wait, reset - time.time(), 1.0)
        return wait

    def failed(self, username: str, address: str | None) -> None:
        for item, *key in self._keys(username, address):
            self.limiter.hit(item, *key)

    def succeeded(self, username: str) -> None:
        self.limiter.clear(self.per_user, "signin-user", username.lower())


def sign_in(session: Session, throttle: SignInThrottle, username: str, password: str,
            address: str | None = None) -> User:
    """The user a username and password name; the same error for an unknown user and a wrong password, and a
    429 with ``retry_after`` while locked out. Every outcome is in the audit log."""
    wait = throttle.locked_for(username, address)
    if wait:
        audit.record(session, "login.locked", address=address, username=username[:64])
        raise RateLimitedError(f"Too many failed sign-ins; try again in {int(wait) + 1} seconds.",
                               retry_after=wait, code="sign_in_locked")
    user = user_by_name(session, username) if len(username) <= 64 else None
    ok = user is not None and not user.disabled and user.password_hash and _hasher().verify(password,
                                                                                             user.password_hash)
    if not ok:
        throttle.failed(username, address)
        audit.record(session, "login.failed", address=address, user_id=user.id if user else None,
                     username=username[:64])
        raise TemperingError("Incorrect username or password.", code="invalid_credentials", kind="forbidden")
    throttle.succeeded(username)
    audit.record(session, "login.succeeded", address=address, user_id=user.id, target=user.id)
    return user


def change_password(session: Session, throttle: SignInThrottle, user: User, current: str, new: str,
                    address: str | None = None) -> None:
    """A user's own new password, given their current one, which is checked under the sign-in throttle (the form
    is no way around its lockout); every portal session signed before it ends."""
    wait = throttle.locked_for(user.username, address)
    if wait:
        audit.record(session, "login.locked", project_id=None, address=address, username=user.username,
                     changing_password=True)
        raise RateLimitedError(f"Too many failed attempts; try again in {int(wait) + 1} seconds.",
                               retry_after=wait, code="sign_in_locked")
    if not (user.password_hash and _hasher().verify(current, user.password_hash)):
        throttle.failed(user.username, address)
        audit.record(session, "login.failed", project_id=None, address=address, user_id=user.id,
                     username=user.username, changing_password=True)
        raise TemperingError("The current password is not correct.", param="current_password",
                             code="invalid_credentials", kind="forbidden")
    _set_password(user, check_password(new))
    audit.record(session, "user.password_reset", project_id=None, user_id=user.id, target=user.id, own=True,
                 address=address)


@dataclass
class Bootstrap:
    """What the server's first start created and must print once."""

    admin_password: str | None = None
    admin_key: str | None = None


def bootstrap(db) -> Bootstrap:
    """On first start: a default hub, the admin user (a server administrator and the hub's admin) with a
    one-time password, a default project and an Owner key of the admin's in it. After a migration from a
    database without users, the admin exists without a password: it is given one here."""
    out = Bootstrap()
    with db.session() as session:
        hub = session.scalars(select(Hub).order_by(Hub.created_at).limit(1)).first()
        if hub is None:
            hub = Hub(name="default", settings={})
            session.add(hub)
            session.flush()
        admin = session.scalars(select(User).where(User.is_admin.is_(True)).order_by(User.created_at)
                                .limit(1)).first()
        if admin is None:
            admin, out.admin_password = create_user(session, "admin", name="Administrator", is_admin=True)
        elif not admin.password_hash:
            out.admin_password = reset_password(session, admin)
        if session.get(HubMember, (hub.id, admin.id)) is None:
            session.add(HubMember(hub_id=hub.id, user_id=admin.id, role="admin"))
        if session.scalars(select(Project).limit(1)).first() is None:
            project = Project(name="default", hub_id=hub.id, quotas={})
            session.add(project)
            session.flush()
            session.add(ProjectMember(project_id=project.id, user_id=admin.id, role="owner"))
            _, out.admin_key = create_key(session, project.id, "admin", "owner", user_id=admin.id)
    return out
