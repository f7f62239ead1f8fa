"""Server keys and tenants.

Clients present a key as ``x-api-key`` (what the SDK sends) or ``Authorization: Bearer``.
Each key is a tenant: its batches are stored under the key's id, ``key_`` and the first 16
hex digits of its SHA-256, never the key. Another key's batch answers 404, as an unknown
one does, and never shows in lists.

The dashboard keeps a session in a cookie that is not the key either: the key's id and an
HMAC of it made with the key, so any server holding the same keys (several behind one proxy,
or after a restart) accepts it, and a leaked cookie does not reveal the key.

Without keys (``--insecure-no-auth``, loopback only) every client is the local user, whose
batches are those made without a key, the CLI's included.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from batchrun.errors import ConfigError
from batchrun.server.errors import ApiError

# Where `batchrun serve` reads its keys: comma-separated.
KEYS_ENV = "BATCHRUN_SERVE_API_KEYS"
# Shorter keys are guessable; the docs show how to make a long random one.
MIN_KEY_CHARS = 16
# Cookie holding the dashboard session.
SESSION_COOKIE = "batchrun_session"
_SESSION_CONTEXT = b"batchrun dashboard session v1"


def key_id(key: str) -> str:
    """The stored name of ``key``: not the key, and not enough to find it."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ServerKeys:
    """The keys a server accepts; empty when it runs without authentication."""

    _ids_by_digest: Mapping[bytes, str] = field(default_factory=dict)
    _keys_by_id: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Iterable[str]) -> ServerKeys:
        """Keys as given; ConfigError for one that is too short or holds whitespace."""
        ids: dict[bytes, str] = {}
        secrets: dict[str, bytes] = {}
        for number, key in enumerate(keys, start=1):
            if len(key) < MIN_KEY_CHARS or any(char.isspace() for char in key):
                raise ConfigError(
                    f"{KEYS_ENV}: key {number} is not usable: keys need at least "
                    f"{MIN_KEY_CHARS} characters and no spaces; make one with "
                    "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                )
            ids[hashlib.sha256(key.encode()).digest()] = key_id(key)
            secrets[key_id(key)] = key.encode()
        return cls(ids, secrets)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerKeys:
        """The keys in ``$BATCHRUN_SERVE_API_KEYS`` (comma-separated; blanks ignored)."""
        raw = env.get(KEYS_ENV, "")
        return cls.of(part.strip() for part in raw.split(",") if part.strip())

    @property
    def required(self) -> bool:
        """Whether clients must present a key."""
        return bool(self._ids_by_digest)

    def owner_of(self, key: str) -> str | None:
        """The key's id if it is one of the server's keys, else None. The lookup is by the
        key's digest, so how long it takes says nothing about the key."""
        return self._ids_by_digest.get(hashlib.sha256(key.encode()).digest())

    def session_for(self, owner: str) -> str:
        """The dashboard cookie value for the key with id ``owner``."""
        return owner + "." + self._mac(owner)

    def owner_of_session(self, value: str) -> str | None:
        """The key id a dashboard cookie stands for, or None if it is not valid."""
        owner, _, mac = value.partition(".")
        if owner not in self._keys_by_id:
            return None
        return owner if hmac.compare_digest(mac, self._mac(owner)) else None

    def _mac(self, owner: str) -> str:
        return hmac.new(self._keys_by_id[owner], _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``x-api-key``, else an ``Authorization: Bearer`` token."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def request_owner(keys: ServerKeys, headers: Mapping[str, str]) -> str | None:
    """The key id a request is made with (None without authentication); ApiError 401 if the
    server needs a key and the request presents none of its keys. The presented key is
    never repeated in the answer."""
    if not keys.required:
        return None
    key = presented_key(headers)
    if key is None:
        raise ApiError(401, "x-api-key header is required")
    owner = keys.owner_of(key)
    if owner is None:
        raise ApiError(401, "invalid x-api-key")
    return owner
