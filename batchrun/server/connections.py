"""Limits on the server's connections, against clients that hold them open (slowloris).

uvicorn closes idle keep-alive connections, but has no deadline for reading a request: a
client sending a request line a byte a minute, or a body that never comes, holds its
connection (and a file descriptor) for as long as it likes, and nothing caps how many it
opens. :func:`guarded_protocol` is uvicorn's h11 protocol with:

- a **header timeout**: the request line and headers must arrive within ``header_timeout_s``
  of the connection (or, on a kept-alive connection, of the request's first byte); else the
  server answers ``408`` and closes;
- a **body timeout**: while a body is read, at most ``body_timeout_s`` may pass without a byte
  of it (time the server itself stops reading, because the app is busy or has not yet asked
  for a body sent with ``Expect: 100-continue``, does not count); else it closes, and the
  create that was reading it fails as a body cut short, storing nothing;
- a **connection cap**: past ``max_connections`` open connections, a new one is answered
  ``503`` and closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# Seconds for a request's line and headers: clients send them in one packet.
HEADER_TIMEOUT_S = 10.0
# Seconds a body may pause between two reads (nginx's client_body_timeout is 60 s).
BODY_TIMEOUT_S = 30.0
# Connections open at once; more are answered 503 (each holds a file descriptor, and the
# usual limit of a process is 1,024).
MAX_CONNECTIONS = 500

_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 45\r\n\r\n"
    b"the request line and headers came too slowly\n"
)
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\nretry-after: 1\r\ncontent-length: 40\r\n\r\n"
    b"too many connections; try again shortly\n"
)


@dataclass(frozen=True)
class ConnectionLimits:
    """The deadlines and the cap :func:`guarded_protocol` applies."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with ``limits`` (for ``uvicorn.Config(http=...)``)."""
    return type("GuardedH11Protocol", (_GuardedH11Protocol,), {"limits": limits})


class _GuardedH11Protocol(H11Protocol):
    limits: ConnectionLimits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        # "head" (reading a request line and headers), "body", or None (nothing to read).
        self._phase: str | None = None
        self._head_started = 0.0
        self._last_read = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.debug("refused a connection: %d are open", len(self.connections) - 1)
            self._phase = None
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._start_head()

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self._last_read = now
        if self._phase is None and self.conn.their_state is h11.IDLE:
            # The first byte of the next request on a kept-alive connection.
            self._start_head(now)
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        # Between requests the keep-alive timeout applies, not ours.
        self._stop()
        super().on_response_complete()
        if self.conn.their_state is not h11.IDLE:
            self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)

    # -- the deadlines ----------------------------------------------------------------------

    def _start_head(self, now: float | None = None) -> None:
        self._phase = "head"
        self._head_started = self.loop.time() if now is None else now
        self._arm(self.limits.header_timeout_s)

    def _follow(self) -> None:
        """Move to the phase h11's state says, after the events of new data."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._phase != "body":
                self._phase = "body"
                self._last_read = self.loop.time()
                self._arm(self.limits.body_timeout_s)
        elif state is not h11.IDLE:
            self._stop()

    def _arm(self, delay_s: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(max(delay_s, 0.0), self._check)

    def _stop(self) -> None:
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._phase == "head":
            left = self._head_started + self.limits.header_timeout_s - now
            if left > 0:
                self._arm(left)
                return
            log.debug("closed a connection from %s: no request head in time", self.client)
            self._phase = None
            self.transport.write(_TIMED_OUT)
            self.transport.close()
        elif self._phase == "body":
            if self.flow.read_paused or (
                self.cycle is not None and self.cycle.waiting_for_100_continue
            ):
                # The server is not reading: the client is not the one waiting.
                self._last_read = now
            left = self._last_read + self.limits.body_timeout_s - now
            if left > 0:
                self._arm(left)
                return
            log.debug("closed a connection from %s: its body stopped coming", self.client)
            self._phase = None
            self.transport.close()
