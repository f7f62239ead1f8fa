"""Server-sent events (the ``text/event-stream`` format) from bytes that arrive in pieces.

Pure: no I/O. ``transport.streaming`` turns the events of a Messages stream into a Message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event: its ``event:`` name ("" when it has none) and its ``data:`` lines, joined."""

    event: str
    data: str


class StreamOverflow(Exception):
    """More is buffered than the stream may hold (an endless line or event)."""


class SSEParser:
    """Server-sent events from bytes fed in pieces, as the WHATWG spec reads them: lines end
    with CRLF, LF or CR (a piece may end between CR and LF), ``data:`` lines of one event are
    joined with newlines, lines starting with ``:`` are comments, a blank line ends an event.
    ``id`` and ``retry`` are ignored. An event cut off by the end of the body is dropped.

    What waits for the rest of a line or an event is bounded by ``max_pending_bytes``;
    :meth:`feed` raises :class:`StreamOverflow` beyond it.
    """

    def __init__(self, *, max_pending_bytes: int) -> None:
        self._max_pending_bytes = max_pending_bytes
        self._buffer = bytearray()
        # Where the search for the next line end resumes (nothing before it ends a line).
        self._scanned = 0
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._data_bytes = 0

    def feed(self, piece: bytes) -> list[ServerSentEvent]:
        """The events that ``piece`` completes."""
        buffer = self._buffer
        buffer += piece
        if not self._started:
            if len(buffer) < len(_BOM) and _BOM.startswith(bytes(buffer)):
                return []
            self._started = True
            if buffer.startswith(_BOM):
                del buffer[: len(_BOM)]
        events: list[ServerSentEvent] = []
        start = 0
        for match in _LINE_END.finditer(buffer, self._scanned):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # an LF may follow in the next piece
            self._line(bytes(buffer[start : match.start()]), events)
            start = match.end()
        del buffer[:start]
        self._scanned = max(len(buffer) - 1, 0)
        if len(buffer) + self._data_bytes > self._max_pending_bytes:
            raise StreamOverflow
        return events

    def close(self) -> list[ServerSentEvent]:
        """The body has ended: the event that a final CR completes, if it does."""
        events: list[ServerSentEvent] = []
        if self._buffer.endswith(b"\r"):
            self._line(bytes(self._buffer[:-1]), events)
        self._buffer.clear()
        return events

    def _line(self, line: bytes, events: list[ServerSentEvent]) -> None:
        if not line:
            if self._data or self._event:
                events.append(ServerSentEvent(self._event, "\n".join(self._data)))
            self._event, self._data, self._data_bytes = "", [], 0
            return
        if line[:1] == b":":
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode(errors="replace"))
            self._data_bytes += len(value) + 1
        elif name == b"event":
            self._event = value.decode(errors="replace")
