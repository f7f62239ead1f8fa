"""Streamed answers (``"stream": true``): a Message as the server-sent events of the
Messages API, sent over time.

:func:`message_events` turns a complete Message into its events: ``message_start`` (the
Message with empty content, its usage with ``output_tokens`` 1), per content block
``content_block_start`` (text empty, tool input ``{}``), its ``text_delta`` or
``input_json_delta`` pieces and ``content_block_stop``, then ``message_delta`` (stop_reason,
stop_sequence, ``usage.output_tokens``) and ``message_stop``. Put back together, as a client
does, they make exactly the Message given. :class:`EventSender` sends them, waiting between
them with a ``ping`` at least every ``ping_interval_s``, and cuts the connection where a
proxy's idle timeout would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batchrun.simulator.asgi import Headers, Send, SimulatedIdleCut
from batchrun.simulator.tokens import CHARS_PER_TOKEN

SSE_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
# Output tokens per delta when tokens come at no cost: small pieces, as the API sends.
DELTA_TOKENS = 16
# When tokens take time, a delta carries at least this much of it, so a long answer does not
# cost one event per token (the API batches tokens the same way).
MIN_DELTA_INTERVAL_S = 0.1
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event, and how many characters of output it carries (its share of the time)."""

    data: Mapping[str, Any]
    output_chars: int = 0

    def encoded(self) -> bytes:
        """The event on the wire: ``event: TYPE``, ``data: JSON`` and a blank line."""
        data = json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)
        return f"event: {self.data['type']}\ndata: {data}\n\n".encode()


def delta_chars(per_output_token_s: float) -> int:
    """Characters per text delta for a reply whose tokens take ``per_output_token_s`` each."""
    tokens = DELTA_TOKENS
    if per_output_token_s > 0:
        tokens = max(tokens, int(MIN_DELTA_INTERVAL_S / per_output_token_s) + 1)
    return tokens * CHARS_PER_TOKEN


def message_events(message: Mapping[str, Any], *, piece_chars: int) -> list[StreamEvent]:
    """The events that stream ``message`` (a complete Message), text in ``piece_chars``."""
    usage = dict(message["usage"])
    started = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events = [StreamEvent({"type": "message_start", "message": started})]
    for index, block in enumerate(message["content"]):
        events.extend(_block_events(index, block, piece_chars))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    events.append(
        StreamEvent(
            {
                "type": "message_delta",
                "delta": delta,
                "usage": {"output_tokens": usage["output_tokens"]},
            }
        )
    )
    events.append(StreamEvent({"type": "message_stop"}))
    return events


def _block_events(index: int, block: Mapping[str, Any], piece_chars: int) -> list[StreamEvent]:
    kind = block["type"]
    if kind == "text":
        start: Mapping[str, Any] = {**block, "text": ""}
        field, delta_type, whole = "text", "text_delta", block["text"]
    elif kind == "tool_use":
        start = {**block, "input": {}}
        field, delta_type = "partial_json", "input_json_delta"
        whole = json.dumps(block["input"], ensure_ascii=False)
    else:
        start, field, delta_type, whole = block, "", "", ""
    events = [StreamEvent({"type": "content_block_start", "index": index, "content_block": start})]
    for at in range(0, len(whole), piece_chars):
        piece = whole[at : at + piece_chars]
        delta = {"type": delta_type, field: piece}
        events.append(
            StreamEvent({"type": "content_block_delta", "index": index, "delta": delta}, len(piece))
        )
    events.append(StreamEvent({"type": "content_block_stop", "index": index}))
    return events


class EventSender:
    """Sends one streamed answer over ASGI.

    :meth:`wait` sleeps between events in steps of at most ``ping_interval_s``, with a ping
    after each step that is not the last. With ``idle_timeout_s`` shorter than a silence it
    would keep, it cuts the connection after ``idle_timeout_s`` (:class:`SimulatedIdleCut`).
    ``client_gone`` tells whether the client has left, so a stream nobody reads stops.
    """

    def __init__(
        self,
        send: Send,
        *,
        ping_interval_s: float,
        idle_timeout_s: float | None,
        client_gone: Callable[[], bool],
    ) -> None:
        self._send = send
        self._ping_interval_s = ping_interval_s
        self._idle_timeout_s = idle_timeout_s
        self._client_gone = client_gone

    @property
    def client_gone(self) -> bool:
        """True once the client has gone away."""
        return self._client_gone()

    async def start(self, headers: Headers) -> None:
        """Send the status and headers (200, ``text/event-stream``)."""
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def event(self, event: StreamEvent) -> None:
        """Send one event."""
        await self._chunk(event.encoded())

    async def ping(self) -> None:
        """Send a ``ping`` event."""
        await self._chunk(_PING)

    async def raw(self, data: bytes) -> None:
        """Send bytes as they are (a malformed event)."""
        await self._chunk(data)

    async def end(self) -> None:
        """End the body."""
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def wait(self, delay_s: float) -> None:
        """Wait ``delay_s``, pinging so no silence is longer than ``ping_interval_s``."""
        if delay_s <= 0.0:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + delay_s
        while (left_s := until - loop.time()) > 1e-9 and not self.client_gone:
            step_s = min(left_s, self._ping_interval_s)
            if self._idle_timeout_s is not None and step_s > self._idle_timeout_s:
                await asyncio.sleep(self._idle_timeout_s)
                raise SimulatedIdleCut("simulated idle timeout: the stream went silent")
            await asyncio.sleep(step_s)
            if until - loop.time() > 1e-9:
                await self.ping()

    async def _chunk(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
