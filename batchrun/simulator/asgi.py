"""ASGI 3 plumbing: types, reading a body, sending a response, lifespan, request headers."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

API_KEY_DIGEST_PREFIX_CHARS = 12
# A request's scope holds a callable under this key when its server can close the connection
# without an answer (uvicorn, see server.py); in-process there is none.
CLOSE_CONNECTION = "batchrun.simulator.close_connection"


class SimulatedConnectionCut(ConnectionError):
    """The simulator dropped the connection in the middle of a response (a ``cut`` fault)."""


class SimulatedIdleCut(SimulatedConnectionCut):
    """The simulator dropped a connection that stayed silent longer than its
    ``idle_timeout_s``, as a proxy would."""


class Oversized:
    """What :func:`read_body` returns for a body over its ``max_bytes``."""


OVERSIZED = Oversized()


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` if the client went away first."""
    body = await read_body_within(receive, None)
    return None if isinstance(body, Oversized) else body


async def read_body_within(receive: Receive, max_bytes: int | None) -> bytes | Oversized | None:
    """The whole request body, or ``None`` if the client went away first, or
    :data:`OVERSIZED` as soon as it is known to be longer than ``max_bytes`` (it is not read
    further)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            return OVERSIZED
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone away (in-process: wait until cancelled)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_response(send: Send, status: int, headers: Headers, body: bytes) -> None:
    """Send a complete response."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown; the simulator needs neither."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def presented_key(headers: dict[bytes, bytes]) -> tuple[bytes | None, str]:
    """The API key a request carries, and how: ``x-api-key``, ``bearer`` or ``none``."""
    key = headers.get(b"x-api-key")
    if key is not None:
        return key, "x-api-key"
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip(), "bearer"
    return None, "none"


def logged_headers(headers: dict[bytes, bytes]) -> dict[str, str | None]:
    """The request headers tests look at; the API key only as a digest prefix."""

    def text(name: bytes) -> str | None:
        value = headers.get(name)
        return None if value is None else value.decode("latin-1")

    key, scheme = presented_key(headers)
    digest = None if key is None else hashlib.sha256(key).hexdigest()
    return {
        "anthropic-version": text(b"anthropic-version"),
        "anthropic-beta": text(b"anthropic-beta"),
        "content-type": text(b"content-type"),
        "auth_scheme": scheme,
        "api_key_sha256_prefix": None if digest is None else digest[:API_KEY_DIGEST_PREFIX_CHARS],
    }
