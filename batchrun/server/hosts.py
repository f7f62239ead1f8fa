"""Which ``Host`` headers the server answers, and which it may build ``results_url`` from.

A server without keys (``--insecure-no-auth``) listens on loopback only, but a web page can
still reach it through DNS rebinding: its own name, re-pointed at 127.0.0.1, makes the
browser send the page's requests here with ``Host: evil.example``. So without keys only the
loopback names (``localhost``, ``127.0.0.1``, ``[::1]``, any port), the ``--public-url``
host and the ``--allowed-hosts`` names are served; any other Host is answered ``421
Misdirected Request`` in Anthropic's error shape, before any route runs.

With keys every Host is served (the key is the protection), unless ``--allowed-hosts`` is
given, which then lists the only names served. Either way ``results_url`` is never built
from a Host the client chose, unless that name is allowed: it comes from ``--public-url``,
else from an allowed Host, else from the address the connection came in on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from batchrun.errors import ConfigError
from batchrun.server.errors import ApiError, error_json, new_request_id

# The names of this machine a client may use without keys, whatever the port.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# A Host header's name: a DNS name or IPv4 address, or an IPv6 address in brackets.
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
# Status for a Host the server does not answer to (RFC 9110 §15.5.20).
MISDIRECTED = 421
ANY_HOST = "*"


def host_name(value: str) -> str | None:
    """The lower-cased name of a ``Host`` header or URL authority without its port (and a
    final dot); None when it is not a host name."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        name, rest = value[: end + 1], value[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return None
    else:
        name, sep, port = value.partition(":")
        if sep and not _PORT.fullmatch(port):
            return None
    name = name.removesuffix(".")
    return name if _NAME.fullmatch(name) else None


@dataclass(frozen=True)
class HostPolicy:
    """The Host names the server answers and trusts for ``results_url``."""

    # Names whose requests are served and whose Host header may build results_url.
    allowed: frozenset[str]
    # Whether Hosts outside ``allowed`` are refused (without keys always).
    enforced: bool
    # ``--allowed-hosts '*'``: any Host is served and trusted (with keys only).
    any_host: bool = False
    # The server runs without keys (the loopback names are allowed).
    keyless: bool = False

    @classmethod
    def of(
        cls, *, authenticated: bool, public_url: str | None, allowed_hosts: Iterable[str] = ()
    ) -> HostPolicy:
        """The policy of a server with keys or without (``authenticated``), its
        ``--public-url`` and ``--allowed-hosts``; ConfigError for a name that is not one."""
        names: set[str] = set()
        any_host = False
        given = [part.strip() for part in allowed_hosts if part.strip()]
        for part in given:
            if part == ANY_HOST:
                any_host = True
                continue
            name = host_name(part)
            if name is None:
                raise ConfigError(
                    f"--allowed-hosts: {part[:80]!r} is not a host name; give names such as "
                    "batches.example.com (comma-separated, no scheme or path)"
                )
            names.add(name)
        if any_host and not authenticated:
            raise ConfigError(
                "--allowed-hosts '*' would let any web page reach a server without keys "
                "(DNS rebinding); list the names clients use instead"
            )
        if public_url:
            public = host_name(urlsplit(public_url).netloc.rpartition("@")[2])
            if public is None:
                raise ConfigError(
                    f"--public-url: {public_url[:80]!r} has no host; give the URL clients "
                    "reach the server at, e.g. https://batches.example.com"
                )
            names.add(public)
        if not authenticated:
            names |= LOOPBACK_HOSTS
        enforced = not authenticated or (bool(given) and not any_host)
        return cls(frozenset(names), enforced, any_host, keyless=not authenticated)

    def serves(self, name: str | None) -> bool:
        """Whether a request to Host ``name`` (None: none or not a name) is answered."""
        return not self.enforced or name in self.allowed

    def trusts(self, name: str | None) -> bool:
        """Whether ``results_url`` may be built from Host ``name``."""
        return name is not None and (self.any_host or name in self.allowed)


class HostCheck:
    """ASGI middleware: 421 for a request to a Host the policy does not serve."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"host")
        name = host_name(header) if header is not None else None
        if self.policy.serves(name):
            await self.app(scope, receive, send)
            return
        await _refuse(send, self._refusal(header))

    def _refusal(self, header: str | None) -> ApiError:
        shown = "no Host header" if header is None else f"Host {header[:100]!r}"
        names = ", ".join(sorted(self.policy.allowed))
        why = (
            "this server runs without keys, so it answers only to loopback names and its "
            "--public-url host (a web page could otherwise reach it by DNS rebinding)"
            if self.policy.keyless
            else "this server answers only to its --allowed-hosts and --public-url host"
        )
        return ApiError(
            MISDIRECTED,
            f"{shown} is not served here: {why}; use one of {names}, or add the name with "
            "--allowed-hosts",
            "invalid_request_error",
        )


def request_host(scope: Scope) -> str | None:
    """The request's Host header, as sent."""
    return _header(scope, b"host")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


async def _refuse(send: Send, error: ApiError) -> None:
    request_id = new_request_id()
    body = error_json(error, request_id)
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
