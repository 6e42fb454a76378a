"""Secrets at rest: hub secrets (remote backends' keys) are encrypted with the server key (Fernet: AES-128-CBC
with an HMAC, from ``cryptography``), so the database alone does not give them away.

The server key is ``TEMPERING_SECRET_KEY`` when set (a Fernet key; several, comma-separated, decrypt and the
first encrypts: rotation), else a key generated on first use in ``$TEMPERING_HOME/server.key`` (mode 0600).
The same key signs the portal's session cookies (``signing_key``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy import select

from tempering.errors import TemperingError, not_found
from tempering.store.models import HubSecret

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_secret_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TemperingError("a secret's name is 1-64 letters, digits, '_', '.' or '-'", param="name",
                             code="invalid_name")
    return name


def server_keys(settings) -> list[bytes]:
    """The server's Fernet keys, newest first (creating the key file on first use)."""
    from cryptography.fernet import Fernet

    if settings.secret_key:
        return [k.strip().encode() for k in settings.secret_key.split(",") if k.strip()]
    path = Path(settings.root) / "server.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(Fernet.generate_key())
    return [path.read_bytes().strip()]


class Cipher:
    def __init__(self, settings):
        from cryptography.fernet import Fernet, MultiFernet

        self.keys = server_keys(settings)
        self._fernet = MultiFernet([Fernet(k) for k in self.keys])

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise TemperingError("a stored secret cannot be decrypted with the server key (was "
                                 "TEMPERING_SECRET_KEY changed without keeping the old key?)",
                                 code="secret_unreadable", kind="internal") from None

    def signing_key(self) -> bytes:
        """A key for signing (the portal's session cookies), derived from the newest server key."""
        import hashlib

        return hashlib.sha256(b"tempering-signing:" + self.keys[0]).digest()


def hub_secret(session, hub_id: str, name: str, cipher: Cipher) -> str:
    """A hub secret's value, for the server's own use (a backend's key); never for an API response."""
    row = session.scalars(select(HubSecret).where(HubSecret.hub_id == hub_id).where(HubSecret.name == name)).first()
    if row is None:
        raise not_found("secret", name, "name")
    return cipher.decrypt(row.ciphertext)
