"""Webhooks: a project's URLs told of its events, and the thread that delivers them.

Registration checks the URL by the outbound rules: https, or http to a host the server's administrator
allowed (``TEMPERING_WEBHOOK_ALLOWED_HOSTS``); its name must resolve, and to public addresses only
(loopback, private, link-local, shared, reserved and multicast addresses are refused unless the host is
allowed). Sending resolves the name again, checks every address again and connects to the address it
checked (so a name re-pointed at an internal address after registration, DNS rebinding, reaches nothing),
follows no redirect, reads no response body, and waits at most ``webhook_timeout_seconds``.

Deliveries are signed as OpenAI's are (Standard Webhooks): ``webhook-id`` (the event's id, the same on every
retry), ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed
with the secret's bytes (``whsec_<base64>``). A delivery is retried on anything but a 2xx answer, after
``webhook_backoff_seconds`` doubled per try (at most 6 hours), ``webhook_max_attempts`` tries in all; every
try is logged and kept on the delivery. Events are enqueued by ``store.webhooks`` in the unit of work of the
change that causes them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from urllib.parse import urlsplit

from sqlalchemy import select, update

from tempering.errors import TemperingError, not_found
from tempering.services import audit
from tempering.store.models import Webhook, WebhookDelivery, looks_like_id, now
from tempering.store.webhooks import EVENTS

log = logging.getLogger(__name__)
MAX_WEBHOOKS = 20  # per project
MAX_BACKOFF_SECONDS = 6 * 3600
SECRET_PREFIX = "whsec_"  # noqa: S105 - the secrets' prefix, not a secret
_BATCH = 20  # deliveries claimed per pass


class OutboundRefused(TemperingError):
    """A URL the server will not call: the outbound rules refuse it."""

    code = "webhook_url_not_allowed"
    kind = "invalid"


# -- the outbound rules -------------------------------------------------------------------------------------


def _allowed(host: str, allowed_hosts: list[str]) -> bool:
    return host in {h.strip().lower().strip("[]") for h in allowed_hosts if h.strip()}


def resolve(host: str, port: int) -> list[str]:
    """Every address a host name (or literal) resolves to; ``OutboundRefused`` if it resolves to none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise OutboundRefused(f"the webhook URL's host {host[:80]!r} cannot be resolved ({exc})", param="url") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_addresses(host: str, addresses: list[str], allowed_hosts: list[str]) -> None:
    """Refuse a non-public address unless the host is one the administrator allowed."""
    if _allowed(host, allowed_hosts):
        return
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise OutboundRefused(f"the webhook URL's host {host[:80]!r} resolves to a loopback, private, link-local or "
                                  "reserved address; only hosts the administrator allowed "
                                  "(TEMPERING_WEBHOOK_ALLOWED_HOSTS) may", param="url")


def check_url(url: str, allowed_hosts: list[str], resolver=resolve) -> str:
    """The URL, checked by the outbound rules (before anything connects anywhere), in a canonical form."""
    if len(url) > 2048 or any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
        raise OutboundRefused("the webhook URL is over 2048 characters or holds whitespace, a backslash or a "
                              "control character", param="url")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # an unbalanced "[" of an IPv6 literal
        raise OutboundRefused("the webhook URL cannot be parsed", param="url") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise OutboundRefused("the webhook URL must be an https:// URL with a host", param="url")
    if parts.username or parts.password or parts.fragment:
        raise OutboundRefused("the webhook URL may not hold credentials or a fragment", param="url")
    try:
        port = parts.port
    except ValueError:
        raise OutboundRefused("the webhook URL's port is not a number from 0 to 65535", param="url") from None
    host = hostname.lower()
    if parts.scheme == "http" and not _allowed(host, allowed_hosts):
        raise OutboundRefused("the webhook URL must be https (plain http only to hosts the administrator "
                              "allowed: TEMPERING_WEBHOOK_ALLOWED_HOSTS)", param="url")
    check_addresses(host, resolver(host, port or _default_port(parts.scheme)), allowed_hosts)
    netloc = f"[{host}]" if ":" in host else host
    netloc = netloc if port is None else f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


# -- registration -------------------------------------------------------------------------------------------


def check_events(events: list[str]) -> list[str]:
    unknown = [e for e in events if e not in EVENTS]
    if not events or unknown:
        raise TemperingError(f"events must name at least one of {', '.join(EVENTS)}"
                             + (f"; unknown: {', '.join(e[:64] for e in unknown[:5])}" if unknown else ""),
                             param="events", code="invalid_value")
    return list(dict.fromkeys(events))


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def create_webhook(session, caller, url: str, events: list[str], cipher, settings) -> tuple[Webhook, str]:
    """Register a URL for some of the project's events; returns the row and its signing secret (shown once)."""
    events = check_events(events)
    url = check_url(url, settings.webhook_allowed_hosts)
    count = len(list_webhooks(session, caller.project_id))
    if count >= MAX_WEBHOOKS:
        raise TemperingError(f"a project has at most {MAX_WEBHOOKS} webhooks", param="url", code="too_many")
    secret = new_secret()
    row = Webhook(project_id=caller.project_id, url=url, events=events, secret_ciphertext=cipher.encrypt(secret))
    session.add(row)
    session.flush()
    audit.record(session, "webhook.created", caller=caller, target=row.id, url=url, events=events)
    return row, secret


def list_webhooks(session, project_id: str) -> list[Webhook]:
    return list(session.scalars(select(Webhook).where(Webhook.project_id == project_id, Webhook.deleted_at.is_(None))
                                .order_by(Webhook.created_at, Webhook.id)))


def get_webhook(session, project_id: str, webhook_id: str) -> Webhook:
    row = session.get(Webhook, webhook_id) if looks_like_id(webhook_id) else None
    if row is None or row.project_id != project_id or row.deleted_at is not None:
        raise not_found("webhook", webhook_id, "webhook_id")
    return row


def delete_webhook(session, caller, webhook_id: str) -> Webhook:
    """Stop a webhook; its pending deliveries are dropped, its delivery log kept."""
    row = get_webhook(session, caller.project_id, webhook_id)
    drop(session, [row])
    audit.record(session, "webhook.deleted", caller=caller, target=row.id)
    return row


def drop(session, hooks: list[Webhook]) -> None:
    for row in hooks:
        row.deleted_at = now()
        session.execute(update(WebhookDelivery).where(WebhookDelivery.webhook_id == row.id,
                                                      WebhookDelivery.status == "pending").values(status="dropped"))


def deliveries(session, project_id: str, webhook_id: str, limit: int = 100) -> list[WebhookDelivery]:
    """A webhook's deliveries, newest first (the webhook may have been deleted since)."""
    row = session.get(Webhook, webhook_id) if looks_like_id(webhook_id) else None
    if row is None or row.project_id != project_id:
        raise not_found("webhook", webhook_id, "webhook_id")
    return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.webhook_id == row.id)
                                .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(limit)))


# -- signing and sending ------------------------------------------------------------------------------------


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks' ``webhook-signature`` value for a body."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def backoff(attempt: int, base: float) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based): base, 2×base, 4×base, …, at most 6 h."""
    return min(base * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, allowed_hosts: list[str],
         resolver=resolve) -> int:
    """POST to a checked address of the URL's host; the status answered. ``OutboundRefused`` when the host now
    resolves somewhere the rules refuse; httpx's errors for a connection that fails."""
    import httpx

    parts = urlsplit(url)
    host = parts.hostname.lower()
    port = parts.port or _default_port(parts.scheme)
    addresses = resolver(host, port)
    check_addresses(host, addresses, allowed_hosts)
    address = addresses[0]
    pinned = f"[{address}]" if ":" in address else address
    target = f"{parts.scheme}://{pinned}:{port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    headers = {**headers, "Host": parts.netloc.rsplit("@", 1)[-1]}
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client, \
            client.stream("POST", target, content=body, headers=headers, extensions=extensions) as response:
        return response.status_code  # the body is never read


class Sender:
    """The delivery thread: every ``webhook_poll_seconds`` it claims due deliveries (an UPDATE that pushes
    their next try past the timeout, so several server processes never send one twice) and sends them."""

    def __init__(self, db, cipher, settings, resolver=resolve):
        self.db, self.cipher, self.settings, self.resolver = db, cipher, settings, resolver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.webhook_poll_seconds):
            try:
                self.run_once()
            except Exception:  # a database hiccup: try again on the next pass
                log.exception("webhook delivery pass failed")

    def run_once(self) -> int:
        """Send the deliveries due now; how many were tried."""
        tried = 0
        for delivery_id in self._claim():
            self._deliver(delivery_id)
            tried += 1
        return tried

    def _claim(self) -> list[str]:
        current = time.time()
        lease = current + self.settings.webhook_timeout_seconds + 30
        with self.db.session(write=False) as session:
            due = list(session.scalars(select(WebhookDelivery.id).where(
                WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= current)
                .order_by(WebhookDelivery.next_attempt_at).limit(_BATCH)))
        claimed = []
        for delivery_id in due:
            with self.db.session() as session:
                result = session.execute(update(WebhookDelivery).where(
                    WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= current).values(next_attempt_at=lease))
                if result.rowcount == 1:
                    claimed.append(delivery_id)
        return claimed

    def _deliver(self, delivery_id: str) -> None:
        with self.db.session(write=False) as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            hook = session.get(Webhook, delivery.webhook_id)
            live = hook is not None and hook.deleted_at is None
            url, ciphertext = (hook.url, hook.secret_ciphertext) if live else (None, None)
        if not live:
            self._record(delivery_id, None, "the webhook was deleted", 0.0, dropped=True)
            return
        try:
            secret = self.cipher.decrypt(ciphertext)
        except TemperingError as exc:  # the server key changed: a failed try, not a delivery stuck forever
            self._record(delivery_id, None, exc.message, 0.0)
            return
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "user-agent": "Tempering-Webhooks",
                   "webhook-id": delivery.event_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(secret, delivery.event_id, timestamp, body)}
        code, error, started = None, None, time.monotonic()
        try:
            code = post(url, body, headers, timeout=self.settings.webhook_timeout_seconds,
                        allowed_hosts=self.settings.webhook_allowed_hosts, resolver=self.resolver)
        except OutboundRefused as exc:
            error = exc.message
        except Exception as exc:  # noqa: BLE001 - refused, timeout, TLS, a bad answer: the try failed
            error = f"{type(exc).__name__}: {exc}"[:500]
        self._record(delivery_id, code, error, (time.monotonic() - started) * 1000)

    def _record(self, delivery_id: str, code: int | None, error: str | None, ms: float, *,
                dropped: bool = False) -> None:
        ok = code is not None and 200 <= code < 300
        if code is not None and not ok:
            error = f"the receiver answered {code}"
        with self.db.session() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            delivery.attempts += 1
            attempt = delivery.attempts
            delivery.attempt_log = [*delivery.attempt_log, {"attempt": attempt, "at": time.time(),
                                                            "status_code": code, "error": error,
                                                            "duration_ms": round(ms, 1)}]
            delivery.last_status_code, delivery.last_error = code, error
            if ok or dropped:
                delivery.status = "succeeded" if ok else "dropped"
                delivery.delivered_at = now() if ok else None
            elif attempt >= self.settings.webhook_max_attempts:
                delivery.status = "failed"
            else:
                delivery.next_attempt_at = time.time() + backoff(attempt, self.settings.webhook_backoff_seconds)
            status, event_type, webhook_id = delivery.status, delivery.event_type, delivery.webhook_id
        log.log(logging.INFO if ok else logging.WARNING, "webhook %s delivery %s (%s) try %d: %s -> %s",
                webhook_id, delivery_id, event_type, attempt, code if code is not None else error, status)
