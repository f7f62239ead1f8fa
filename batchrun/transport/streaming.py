"""Long generations: when a request is streamed, and how its server-sent events become the
final Message.

A Messages request sent with ``"stream": true`` is answered ``text/event-stream``:
``message_start`` (the Message with empty content and the usage so far), then per content
block ``content_block_start``, ``content_block_delta``... and ``content_block_stop``, then
``message_delta`` (stop_reason, stop_sequence, cumulative usage) and ``message_stop``.
``ping`` events may come anywhere; an ``error`` event ends a stream that failed after its 200.

:class:`MessageAssembler` is fed the body's bytes as they arrive and builds the Message the
non-streamed call would have returned, as the official SDK's ``get_final_message()`` does:
text deltas (and citations) appended to text blocks, thinking and signature deltas to
thinking blocks, the concatenated ``partial_json`` of a tool-use block parsed into its
``input`` (the start block's ``input``, ``{}``, when there is none), every other block type
passed through as its start block. ``message_delta`` sets stop_reason and stop_sequence, and
each usage field it carries replaces the one from ``message_start``.

Pure: bytes in, values out; the Messages sender (``transport.messages``) does the reading.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from batchrun.transport.sse import ServerSentEvent, SSEParser, StreamOverflow

# -- when to stream ---------------------------------------------------------------------------

# The official SDK refuses a non-streaming request when 3,600 s × max_tokens / 128,000 (the
# time it expects the request to take) exceeds 600 s, i.e. above 21,333 max_tokens
# (anthropic-sdk-python, src/anthropic/_base_client.py, _calculate_nonstreaming_timeout).
SDK_NONSTREAMING_MAX_TOKENS = 21_333
# Models the SDK refuses to call without streaming above a lower max_tokens: the union of
# MODEL_NONSTREAMING_TOKENS in anthropic-sdk-python (src/anthropic/_constants.py, v0.116 to
# v2.15; 2.15 leaves out "claude-opus-4-1-20250805") and in anthropic-sdk-typescript
# (src/internal/constants.ts).
MODEL_NONSTREAMING_MAX_TOKENS: Mapping[str, int] = MappingProxyType(
    {
        "claude-opus-4-20250514": 8_192,
        "claude-opus-4-0": 8_192,
        "claude-4-opus-20250514": 8_192,
        "anthropic.claude-opus-4-20250514-v1:0": 8_192,
        "claude-opus-4@20250514": 8_192,
        "claude-opus-4-1-20250805": 8_192,
        "anthropic.claude-opus-4-1-20250805-v1:0": 8_192,
        "claude-opus-4-1@20250805": 8_192,
    }
)


def stream_threshold_tokens(model: str, configured: int | None) -> int:
    """The largest ``max_tokens`` sent without streaming: the endpoint's
    ``stream_threshold_tokens`` when set (for every model), else the official SDK's rule."""
    if configured is not None:
        return configured
    return min(SDK_NONSTREAMING_MAX_TOKENS, MODEL_NONSTREAMING_MAX_TOKENS.get(model, 2**63))


def should_stream(params: Mapping[str, Any], configured: int | None) -> bool:
    """Whether a request (its params) is sent with ``"stream": true``."""
    max_tokens = params.get("max_tokens")
    model = params.get("model")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return False
    if not isinstance(model, str):
        return False
    return max_tokens > stream_threshold_tokens(model, configured)


# -- assembly ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamComplete:
    """``message_stop`` came: ``message`` is the final Message."""

    message: dict[str, Any]


@dataclass(frozen=True)
class StreamError:
    """An ``error`` event: ``body`` is its error object (``{"type": "error", "error": ...}``)."""

    body: dict[str, Any]


@dataclass(frozen=True)
class StreamBroken:
    """The stream ended before ``message_stop``, or sent something that is not a valid event
    of a Messages stream: worth another attempt."""

    reason: str


@dataclass(frozen=True)
class StreamTooLarge:
    """The message (or what waits to be parsed) grew past the size cap."""

    limit_bytes: int


StreamEnd = StreamComplete | StreamError | StreamBroken | StreamTooLarge

# Blocks whose input arrives as input_json_delta pieces (as the SDK tracks them, plus the
# MCP tool-use block of the beta API).
_TOOL_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
# delta type → (the block type it applies to, the block's field it extends)
_TEXT_DELTAS = {
    "text_delta": ("text", "text"),
    "thinking_delta": ("thinking", "thinking"),
}


class _Malformed(Exception):
    """Internal: the event cannot belong to a Messages stream."""


@dataclass
class _Block:
    """A content block being assembled; long strings are kept in pieces until the end."""

    value: dict[str, Any]
    pieces: dict[str, list[str]] = field(default_factory=dict)

    def extend(self, name: str, piece: str) -> None:
        self.pieces.setdefault(name, []).append(piece)

    def finished(self) -> dict[str, Any]:
        value = self.value
        for name, pieces in self.pieces.items():
            joined = "".join(pieces)
            if name == "partial_json":
                if joined.strip():
                    value["input"] = _parse_input(joined)
            else:
                start = value.get(name)
                value[name] = (start if isinstance(start, str) else "") + joined
        self.pieces = {}
        return value


def _parse_input(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _Malformed(
            "the input_json_delta pieces of a tool-use block are not JSON together"
        ) from None


class MessageAssembler:
    """Feed it the body of a streamed answer, piece by piece; it returns how the stream
    ended once it has (:data:`StreamEnd`), else None.

    ``max_bytes`` bounds memory: the assembled message (counted as the start events' JSON
    plus every delta's text) and what waits to be parsed. ``events`` counts the events that
    carried part of the message (pings and comments do not), so a reader can tell a stream
    that progresses from one that only keeps its connection alive.
    """

    def __init__(self, *, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._parser = SSEParser(max_pending_bytes=max_bytes)
        self._message: dict[str, Any] | None = None
        self._blocks: list[_Block] = []
        self._size = 0
        self._end: StreamEnd | None = None
        self.events = 0

    def feed(self, piece: bytes) -> StreamEnd | None:
        """Take the next bytes of the body; the end of the stream once it has come."""
        if self._end is not None:
            return self._end
        try:
            for event in self._parser.feed(piece):
                self._end = self._apply(event)
                if self._end is not None:
                    break
        except StreamOverflow:
            self._end = StreamTooLarge(self._max_bytes)
        except _Malformed as exc:
            self._end = StreamBroken(f"malformed stream: {exc}")
        if self._size > self._max_bytes:
            self._end = StreamTooLarge(self._max_bytes)
        return self._end

    def finish(self) -> StreamEnd:
        """The body has ended: how the stream ended (cut short unless ``message_stop`` came)."""
        if self._end is None:
            try:
                for event in self._parser.close():
                    self._end = self._apply(event)
                    if self._end is not None:
                        return self._end
            except _Malformed as exc:
                self._end = StreamBroken(f"malformed stream: {exc}")
                return self._end
            where = "before message_start" if self._message is None else "before message_stop"
            self._end = StreamBroken(f"the stream ended {where} (cut after {self.events} events)")
        return self._end

    def _apply(self, event: ServerSentEvent) -> StreamEnd | None:
        if event.event == "ping":
            return None
        if event.event == "error":
            return StreamError(_error_body(event.data))
        data = _event_data(event)
        kind = data["type"]
        if kind == "ping":
            return None
        if kind == "error":
            return StreamError(data if isinstance(data.get("error"), dict) else _error_body(""))
        message = self._message
        if kind == "message_start":
            if message is not None:
                raise _Malformed("a second message_start")
            started = data.get("message")
            if not isinstance(started, dict) or not isinstance(started.get("content"), list):
                raise _Malformed("message_start carries no message")
            self._message = started
            self._blocks = [_Block(block) for block in started["content"] if _is_block(block)]
            self._count(event.data)
            return None
        if message is None:
            if kind in _MESSAGE_EVENTS:
                raise _Malformed(f"{kind} before message_start")
            return None  # an event type added after this code was written
        if kind == "content_block_start":
            block = data.get("content_block")
            if data.get("index") != len(self._blocks) or not isinstance(block, dict):
                raise _Malformed(f"content_block_start for index {data.get('index')!r}")
            if not isinstance(block.get("type"), str):
                raise _Malformed("content_block_start without a block type")
            self._blocks.append(_Block(block))
            self._count(event.data)
        elif kind == "content_block_delta":
            self._delta(self._block(data), data.get("delta"))
        elif kind == "content_block_stop":
            self._block(data)
            self.events += 1
        elif kind == "message_delta":
            self._message_delta(message, data)
        elif kind == "message_stop":
            self.events += 1
            message["content"] = [block.finished() for block in self._blocks]
            return StreamComplete(message)
        return None

    def _block(self, data: dict[str, Any]) -> _Block:
        index = data.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise _Malformed(f"{data['type']} without an index")
        if not 0 <= index < len(self._blocks):
            raise _Malformed(f"{data['type']} for block {index}, which has not started")
        return self._blocks[index]

    def _delta(self, block: _Block, delta: Any) -> None:
        if not isinstance(delta, dict) or not isinstance(delta.get("type"), str):
            raise _Malformed("content_block_delta without a delta")
        self.events += 1
        kind = delta["type"]
        block_type = block.value.get("type")
        # A delta that does not fit its block is skipped, as the SDK does.
        if kind in _TEXT_DELTAS:
            wanted, name = _TEXT_DELTAS[kind]
            piece = delta.get(name)
            if block_type == wanted and isinstance(piece, str):
                block.extend(name, piece)
                self._size += len(piece)
        elif kind == "input_json_delta":
            piece = delta.get("partial_json")
            if block_type in _TOOL_INPUT_BLOCKS and isinstance(piece, str):
                block.extend("partial_json", piece)
                self._size += len(piece)
        elif kind == "signature_delta":
            signature = delta.get("signature")
            if block_type == "thinking" and isinstance(signature, str):
                block.value["signature"] = signature
                self._size += len(signature)
        elif kind == "citations_delta":
            citation = delta.get("citation")
            if block_type == "text" and citation is not None:
                citations = block.value.get("citations")
                if not isinstance(citations, list):
                    citations = block.value["citations"] = []
                citations.append(citation)
                self._size += _json_size(citation)

    def _message_delta(self, message: dict[str, Any], data: dict[str, Any]) -> None:
        delta = data.get("delta")
        usage = data.get("usage")
        if not isinstance(delta, dict):
            raise _Malformed("message_delta without a delta")
        self.events += 1
        message["stop_reason"] = delta.get("stop_reason")
        message["stop_sequence"] = delta.get("stop_sequence")
        for key, value in delta.items():
            if key not in ("stop_reason", "stop_sequence"):
                message[key] = value
        if isinstance(usage, dict):
            merged = message.get("usage")
            if not isinstance(merged, dict):
                merged = message["usage"] = {}
            # Cumulative counts: each one present replaces the earlier one.
            merged.update({key: value for key, value in usage.items() if value is not None})
        self._size += _json_size(data)

    def _count(self, data: str) -> None:
        self.events += 1
        self._size += len(data)


_MESSAGE_EVENTS = frozenset(
    {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"}
    | {"message_stop"}
)


def _is_block(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("type"), str)


def _event_data(event: ServerSentEvent) -> dict[str, Any]:
    data = _loads(event.data)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        name = f" {event.event!r}" if event.event else ""
        raise _Malformed(f"the data of an event{name} is not a JSON object with a type")
    return data


def _json_size(value: Any) -> int:
    """The bytes of ``value`` as compact JSON, for the size cap. orjson refuses a str holding
    a lone surrogate (an escape a server may send); the standard library writes its escape."""
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return len(json.dumps(value, separators=(",", ":")))


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        # What orjson refuses and JSON allows: integers past 64 bits, lone surrogates.
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _error_body(data: str) -> dict[str, Any]:
    """The error object of an ``error`` event; one made up when its data is not one."""
    parsed = _loads(data)
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return parsed
    snippet = data[:200].strip()
    message = "the stream sent an error event" + (f": {snippet}" if snippet else "")
    return {"type": "error", "error": {"type": "api_error", "message": message}}


def message_json(message: Mapping[str, Any]) -> bytes:
    """An assembled Message as compact JSON, UTF-8 where it can be (escaped where a lone
    surrogate leaves no choice)."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(message, separators=(",", ":")).encode()
