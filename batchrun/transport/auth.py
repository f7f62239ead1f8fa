"""Auth styles: how an endpoint's key becomes request headers, and which headers are secret.

One registry. An auth style names the headers that carry the key (``x-api-key: KEY``,
``authorization: Bearer KEY``, or none); the config file's ``auth = "..."`` picks one by name.
Everything that must treat credentials with care reads this module:

- the config file refuses a literal value for any secret header
  (:func:`secret_header_names`): keys live in the environment;
- :func:`request_headers` builds the headers of a run and lists the secret values in them:
  the key, and every header value taken from the environment (``headers_env``);
- the HTTP plumbing (``transport.http``) refuses secret values HTTP cannot carry without
  quoting them, and the senders cut them out of anything a server echoes back
  (:func:`redact`).

Adding an auth style is one ``AUTH_STYLES.register(AuthStyle(...))`` call (or one entry in
:data:`AUTH_STYLES`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from batchrun.registry import Registry

# What a secret is replaced with in anything batchrun keeps or prints.
REDACTED = "[redacted]"
# Credential headers whatever the auth style: a proxy's own credentials, or a second
# authorization a gateway asks for.
ALWAYS_SECRET_HEADERS = ("authorization", "proxy-authorization", "x-api-key")
# Shorter values are not worth redacting (and would mangle unrelated text).
MIN_SECRET_CHARS = 8


@dataclass(frozen=True)
class AuthStyle:
    """How a key is sent. ``headers(key)`` gives the headers; ``secret_headers`` names them
    (lower case). A style without ``headers`` needs no key."""

    name: str
    secret_headers: tuple[str, ...] = ()
    headers: Callable[[str], dict[str, str]] | None = None

    @property
    def needs_key(self) -> bool:
        return self.headers is not None


AUTH_STYLES: Registry[AuthStyle] = Registry(
    "auth style",
    [
        AuthStyle(
            "bearer",
            secret_headers=("authorization",),
            headers=lambda key: {"authorization": f"Bearer {key}"},
        ),
        AuthStyle(
            "x-api-key", secret_headers=("x-api-key",), headers=lambda key: {"x-api-key": key}
        ),
        AuthStyle("none"),
    ],
)


def secret_header_names() -> frozenset[str]:
    """Every header name whose value is a credential (lower case)."""
    names = set(ALWAYS_SECRET_HEADERS)
    for style in AUTH_STYLES:
        names.update(header.lower() for header in style.secret_headers)
    return frozenset(names)


@dataclass(frozen=True)
class RequestHeaders:
    """The headers of an endpoint's requests, and the secret values among them (longest
    first, each also without a ``Bearer`` scheme), for redaction."""

    headers: Mapping[str, str]
    secrets: tuple[str, ...]


def request_headers(
    *,
    style: str,
    key: str | None,
    fixed: Mapping[str, str],
    from_env: Mapping[str, str],
) -> RequestHeaders:
    """The headers for one endpoint: ``fixed`` ones (from its definition), those whose value
    came from the environment (``from_env``, header → value), and the key in ``style``'s
    headers. Every value from the environment is a secret, and so is every value of a secret
    header."""
    auth = AUTH_STYLES.get(style)
    headers = {"content-type": "application/json", **fixed, **from_env}
    if auth.headers is not None and key is not None:
        headers.update(auth.headers(key))
    secret_names = secret_header_names()
    values = [value for name, value in headers.items() if name.lower() in secret_names]
    values.extend(from_env.values())
    if key is not None:
        values.append(key)
    secrets = _secret_values(values)
    _KNOWN_SECRETS.update(secrets)
    return RequestHeaders(headers, secrets)


def _secret_values(values: Iterable[str]) -> tuple[str, ...]:
    found: set[str] = set()
    for value in values:
        found.add(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.lower() == "bearer":
            found.add(token)
    # Longest first, so a token inside its own "Bearer ..." value is replaced whole.
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by :data:`REDACTED`."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_bytes(body: bytes, secrets: Iterable[str]) -> bytes:
    """``body`` with every secret replaced by :data:`REDACTED`."""
    for secret in secrets:
        body = body.replace(secret.encode(), REDACTED.encode())
    return body


# Every secret this process has put into request headers: what RedactingFilter cuts out of
# log records (a server may echo a key in a header that a library logs at debug level).
_KNOWN_SECRETS: set[str] = set()


class RedactingFilter(logging.Filter):
    """A logging filter that replaces every secret this process sends with
    :data:`REDACTED` in each record's message. The CLI puts it on its log handler; a program
    using the Python API with its own logging can do the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _KNOWN_SECRETS:
            return True
        message = record.getMessage()
        cleaned = redact(message, sorted(_KNOWN_SECRETS, key=len, reverse=True))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
