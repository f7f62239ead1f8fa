"""A server for repair tests: the simulator, except that repairs are answered right."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from batchrun.simulator import SimulatorApp

# The simulator directive that breaks every structured answer of a request that carries it.
BROKEN = "[[sim:invalid_output=1]]"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RepairsAnsweredWell:
    """The simulator, except that a repair send (messages with an assistant turn) reaches it
    without the :data:`BROKEN` directive: answered right, though the first answer was not."""

    def __init__(self, app: SimulatorApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/v1/messages"):
            await self.app(scope, receive, send)  # type: ignore[arg-type]
            return
        body = await read_body(receive)
        params = json.loads(body)
        if any(turn.get("role") == "assistant" for turn in params.get("messages", [])):
            body = body.replace(BROKEN.encode(), b"")
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, replay(body), send)  # type: ignore[arg-type]


async def read_body(receive: Receive) -> bytes:
    """A request's whole body, from its ASGI messages."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def replay(body: bytes) -> Receive:
    """An ASGI ``receive`` that gives ``body`` (again) as the whole request."""
    given = False

    async def receive() -> Message:
        nonlocal given
        if given:
            return {"type": "http.disconnect"}
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
