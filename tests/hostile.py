"""A small hostile Messages server: the answers a well-behaved server never gives.

It is a real HTTP/1.1 server on 127.0.0.1, written on asyncio streams so that it controls
every byte: bodies that drip, never end, lie about their length or decompress to gigabytes,
headers that echo the key. A request picks its answer with ``<<hostile:MODE>>`` anywhere in
its body; without one it gets a normal Anthropic Message. ``server.log`` records each request
(its mode and headers) so a test can count what was paid for.

A provider batch API answers on any path holding ``/batches`` (see :meth:`HostileServer._batch`):
the create's mode (from the directive in its body) decides how that batch and its results
misbehave: ``batch_echo_key`` (a 401 quoting the key), ``batch_not_json`` (a 200 that is no
batch object), ``batch_poisoned`` (results with poisoned usage, garbage and echoed keys),
``batch_odd`` (results whose text, model, stop_reason and error messages hold a lone
surrogate and a NUL).

Modes (see :data:`MODES`): ``openai``, ``foreign``, ``not_json``, ``deep``, ``usage_2_63``,
``usage_2_31``, ``negative_usage``, ``retry_after_huge``, ``retry_after_ms_huge``,
``reset_9999``, ``retry_after_10h``, ``tiny_limit``, ``drip``, ``endless``, ``gzip_bomb``,
``oversized``, ``echo_key``, ``odd_text`` (a Message whose text holds a lone surrogate
and a NUL, as JSON escapes), ``odd_fields`` (those in its model and stop_reason too),
``odd_400``, ``odd_402`` and ``odd_500`` (errors whose message holds them), ``sse_odd`` (a streamed
answer holding them in its text and stop_reason), ``html_login`` (a 200 whose
body is an HTML login page, as a gateway that lost its session sends), and for streamed requests
``sse_pings`` (a stream that starts, then sends pings forever) and ``sse_drip`` (a stream
whose next event never ends: a byte of it every ``drip_interval_s``).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_DIRECTIVE = re.compile(rb"<<hostile:([a-z0-9_]+)>>")
_MIB = 1024 * 1024


def message(text: str = "hello", **usage: int) -> dict[str, Any]:
    """A well-formed Anthropic Message."""
    return {
        "id": "msg_hostile",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


# A lone surrogate and a NUL: json.dumps writes them as the escapes \ud800 and \u0000,
# which JSON allows and no database text column takes as they are.
ODD_TEXT = "\ud800 and \x00 end"


def _odd_result(index: int) -> dict[str, Any]:
    """A result line of a ``batch_odd`` provider batch: every third one a Message whose
    text, model and stop_reason hold :data:`ODD_TEXT`, every third an error whose message
    does, the others plain."""
    if index % 3 == 0:
        odd = {**message(ODD_TEXT), "model": "claude-haiku-4-5" + ODD_TEXT}
        return {"type": "succeeded", "message": {**odd, "stop_reason": "end_turn" + ODD_TEXT}}
    if index % 3 == 1:
        error = {"type": "invalid_request_error", "message": "bad" + ODD_TEXT}
        return {"type": "errored", "error": {"type": "error", "error": error}}
    return {"type": "succeeded", "message": message()}


# The provider batch modes whose results come from another origin or a redirect
# (``batch_foreign_url``: its results_url names ``elsewhere``, which must never be asked;
# ``batch_redirect_foreign``: its results answer a 307 to ``elsewhere``;
# ``batch_redirect_same``: a 307 to a path of its own; ``batch_foreign_no_own``: its
# results_url names ``elsewhere`` and its own results path answers 404), hold duplicates
# far apart (``batch_far_duplicates``), never end (``batch_trickle``: a line that never
# ends; ``batch_endless``: lines for ever), never answer a poll (``batch_hang``), or are
# plain (``batch_plain``, what ``elsewhere`` serves: set its batch_mode and batch_ids).
BATCH_RESULT_MODES = frozenset(
    {
        "batch_foreign_url",
        "batch_foreign_no_own",
        "batch_hang",
        "batch_redirect_foreign",
        "batch_redirect_same",
        "batch_far_duplicates",
        "batch_trickle",
        "batch_endless",
        "batch_plain",
    }
)
# The cookie every answer in those modes sets.
COOKIE = "hostile-cookie-0123456789"


def _batch_error(error_type: str) -> dict[str, Any]:
    error = {"type": error_type, "message": f"{error_type} (hostile)"}
    return {"type": "errored", "error": {"type": "error", "error": error}}


def _result_line(custom_id: str, result: dict[str, Any]) -> bytes:
    return json.dumps({"custom_id": custom_id, "result": result}).encode() + b"\n"


def _plain_line(custom_id: str) -> bytes:
    return _result_line(custom_id, {"type": "succeeded", "message": message()})


def _odd_stream() -> bytes:
    """A whole streamed answer whose text and stop_reason hold :data:`ODD_TEXT` (escaped)."""
    start = {"type": "message_start", "message": {**message(), "content": []}}
    block = {"type": "text", "text": ""}
    events: list[dict[str, Any]] = [
        start,
        {"type": "content_block_start", "index": 0, "content_block": block},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": ODD_TEXT},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn" + ODD_TEXT}, "usage": {}},
        {"type": "message_stop"},
    ]
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@functools.cache
def _gzip_bomb(size: int) -> bytes:
    """``size`` bytes of zeros, gzipped (about 1/1000 of that on the wire)."""
    return gzip.compress(b"\0" * size, compresslevel=9)


@dataclass
class Request:
    """What the server received."""

    mode: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HostileServer:
    """The server; ``url`` once it runs (see :func:`running_hostile_server`)."""

    url: str = ""
    log: list[Request] = field(default_factory=list)
    # The batch API's one batch: how its create asked it to misbehave, and its custom_ids.
    batch_mode: str = "normal"
    batch_ids: list[str] = field(default_factory=list)
    # Another origin (a second server's url) that the batch modes in
    # :data:`BATCH_RESULT_MODES` point results at.
    elsewhere: str = ""
    # What ``batch_foreign_no_own``'s own results path answers: 404, 401 or 403.
    own_results_status: int = 404
    # Seconds between the bytes of `drip`.
    drip_interval_s: float = 3.0
    # The mode of a request without a directive (a server that always misbehaves one way).
    default_mode: str = "normal"
    # Built once, before a test measures memory: a gzip of 300 MB of zeros, and a Message
    # of 40 MB.
    bomb: bytes = field(default_factory=lambda: _gzip_bomb(300 * _MIB))
    oversized: bytes = field(default_factory=lambda: json.dumps(message("x" * 40 * _MIB)).encode())

    def modes(self) -> list[str]:
        return [request.mode for request in self.log]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                found = _DIRECTIVE.search(body)
                mode = found.group(1).decode() if found else self.default_mode
                self.log.append(Request(mode, headers, body))
                method, path = [*lines[0].split(" "), "", ""][:2]
                if "/batches" in path:
                    keep_open = await self._batch(method, path, mode, headers, body, writer)
                else:
                    keep_open = await self._answer(mode, headers, writer)
                if not keep_open:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(
        self, mode: str, headers: dict[str, str], writer: asyncio.StreamWriter
    ) -> bool:
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        match mode:
            case "openai":
                body = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": "claude-haiku-4-5",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "hi from openai shape"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
                }
                return await self._send(writer, 200, json.dumps(body).encode())
            case "foreign":
                return await self._send(writer, 200, b'{"hello": "world"}')
            case "not_json":
                return await self._send(writer, 200, b'{"type": "message", "content": [')
            case "html_login":
                page = b"<!doctype html><html><body><form action=/login>Sign in</form></html>"
                return await self._send(writer, 200, page, content_type="text/html")
            case "deep":
                return await self._send(writer, 200, _deep(100_000))
            case "usage_2_63":
                return await self._json(writer, message(input_tokens=2**63))
            case "usage_2_31":
                return await self._json(writer, message(output_tokens=2**31))
            case "negative_usage":
                return await self._json(writer, message(output_tokens=-5))
            case "retry_after_huge":
                return await self._error(writer, 429, {"retry-after": "1e308"})
            case "retry_after_ms_huge":
                return await self._error(writer, 429, {"retry-after-ms": "1e15"})
            case "retry_after_10h":
                return await self._error(writer, 429, {"retry-after": "36000"})
            case "reset_9999":
                return await self._error(
                    writer,
                    429,
                    {
                        "anthropic-ratelimit-requests-remaining": "0",
                        "anthropic-ratelimit-requests-reset": "9999-12-31T23:59:59Z",
                    },
                )
            case "tiny_limit":
                return await self._json(
                    writer, message(), {"anthropic-ratelimit-requests-limit": "0.0001"}
                )
            case "echo_key":
                return await self._json(
                    writer,
                    message(f"your key is {key}"),
                    {"request-id": key, "x-echo": f"key={key}"},
                )
            case "drip":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                writer.write(b"content-length: 100000\r\n\r\n")
                while True:
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(self.drip_interval_s)
            case "endless":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                writer.write(b"transfer-encoding: chunked\r\n\r\n")
                chunk = b" " * _MIB
                while True:
                    writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    await writer.drain()
            case "sse_odd":
                body = _odd_stream()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
                writer.write(f"content-length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
                return True
            case "sse_pings" | "sse_drip":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
                writer.write(b"transfer-encoding: chunked\r\n\r\n")
                start = {"type": "message_start", "message": {**message(), "content": []}}
                event = f"event: message_start\ndata: {json.dumps(start)}\n\n".encode()
                ping = b'event: ping\ndata: {"type": "ping"}\n\n'
                drip = mode == "sse_drip"
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                while True:
                    piece = b"x" if drip else ping
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(self.drip_interval_s if drip else 0.01)
            case "odd_text":
                return await self._json(writer, message(ODD_TEXT))
            case "odd_fields":
                odd = {**message(ODD_TEXT), "model": "claude-haiku-4-5" + ODD_TEXT}
                return await self._json(writer, {**odd, "stop_reason": "end_turn" + ODD_TEXT})
            case "odd_400" | "odd_402" | "odd_500":
                status = int(mode.removeprefix("odd_"))
                kind = {400: "invalid_request_error", 402: "billing_error"}.get(status, "api_error")
                error = {"type": "error", "error": {"type": kind, "message": "bad" + ODD_TEXT}}
                return await self._send(writer, status, json.dumps(error).encode())
            case "gzip_bomb":
                return await self._send(writer, 200, self.bomb, {"content-encoding": "gzip"})
            case "oversized":
                return await self._send(writer, 200, self.oversized)
            case _:
                return await self._json(writer, message())

    async def _batch(
        self,
        method: str,
        path: str,
        mode: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """A provider batch API: one batch at a time, misbehaving as its create asked."""
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if method == "POST" and path.endswith("/batches"):
            self.batch_mode = mode
            self.batch_ids = [
                item["custom_id"] for item in json.loads(body or b"{}").get("requests", [])
            ]
            if mode == "batch_echo_key":
                error = {
                    "type": "error",
                    "error": {"type": "authentication_error", "message": f"bad key {key}"},
                }
                return await self._send(writer, 401, json.dumps(error).encode())
            if mode == "batch_not_json":
                return await self._send(writer, 200, b"<html>created?</html>")
            return await self._json(writer, self._batch_object(ended=False))
        mine = self.batch_mode in BATCH_RESULT_MODES
        if method == "GET" and mine and ("/results" in path or "?" not in path):
            return await self._batch_results(path, writer)
        if method == "GET" and "?" in path:
            return await self._json(writer, {"data": [], "has_more": False})
        if method == "GET" and path.endswith("/results"):
            lines = []
            for index, custom_id in enumerate(self.batch_ids):
                if self.batch_mode == "batch_odd":
                    result = _odd_result(index)
                elif index == 0:
                    result = {"type": "succeeded", "message": message(f"fine, {key}")}
                elif index == 1:
                    result = {"type": "succeeded", "message": message(input_tokens=2**63)}
                elif index == 2:
                    lines.append(b'{"custom_id": "' + custom_id.encode() + b'", "result": {')
                    continue
                else:
                    result = {"type": "succeeded", "message": message()}
                lines.append(json.dumps({"custom_id": custom_id, "result": result}).encode())
            lines.append(
                json.dumps({"custom_id": "stranger", "result": {"type": "expired"}}).encode()
            )
            return await self._send(writer, 200, b"\n".join(lines) + b"\n")
        return await self._json(writer, self._batch_object(ended=True))

    async def _batch_results(self, path: str, writer: asyncio.StreamWriter) -> bool:
        """The batch (ended) and its results in the modes of :data:`BATCH_RESULT_MODES`;
        every answer sets a cookie (it must never reach another origin)."""
        cookie = {"set-cookie": f"hostile_session={COOKIE}; Path=/"}
        results_path = "/v1/messages/batches/msgbatch_hostile/results"
        mode = self.batch_mode
        if "/results" not in path:
            if mode == "batch_hang":
                await asyncio.sleep(3600)
            ended = self._batch_object(ended=True)
            if mode in ("batch_foreign_url", "batch_foreign_no_own"):
                ended["results_url"] = f"{self.elsewhere}{results_path}?sig=foreign-signature"
            return await self._json(writer, ended, cookie)
        if mode == "batch_foreign_no_own":
            kind = {401: "authentication_error", 403: "permission_error"}.get(
                self.own_results_status, "not_found_error"
            )
            error = {"type": "error", "error": {"type": kind, "message": "no"}}
            body = json.dumps(error).encode()
            return await self._send(writer, self.own_results_status, body, cookie)
        if mode == "batch_redirect_foreign":
            moved = {"location": f"{self.elsewhere}{results_path}"} | cookie
            return await self._send(writer, 307, b"", moved)
        if mode == "batch_redirect_same" and not path.endswith("/moved"):
            return await self._send(writer, 307, b"", {"location": f"{results_path}/moved"})
        ids = self.batch_ids
        if mode == "batch_far_duplicates":
            # The first two requests fail first (one transient, one final error), and
            # succeed after every other line: more than an import chunk later.
            failed = [
                _result_line(ids[0], _batch_error("overloaded_error")),
                _result_line(ids[1], _batch_error("invalid_request_error")),
            ]
            body = b"".join([*failed, *map(_plain_line, ids[2:]), *map(_plain_line, ids[:2])])
            return await self._send(writer, 200, body, cookie)
        if mode in ("batch_trickle", "batch_endless"):
            # Every line but the last at once, then a line that never ends (a space every
            # drip_interval_s), or lines for a stranger as fast as the reader takes them.
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/binary\r\n")
            writer.write(b"transfer-encoding: chunked\r\n\r\n")
            first = b"".join(map(_plain_line, ids[:-1] if mode == "batch_trickle" else ids))
            writer.write(f"{len(first):x}\r\n".encode() + first + b"\r\n")
            more = b" " if mode == "batch_trickle" else _plain_line("stranger") * 1000
            while True:
                writer.write(f"{len(more):x}\r\n".encode() + more + b"\r\n")
                await writer.drain()
                await asyncio.sleep(self.drip_interval_s if mode == "batch_trickle" else 0)
        return await self._send(writer, 200, b"".join(map(_plain_line, ids)), cookie)

    def _batch_object(self, *, ended: bool) -> dict[str, Any]:
        count = len(self.batch_ids)
        return {
            "id": "msgbatch_hostile",
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else count,
                "succeeded": count if ended else 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": "2026-12-02T00:00:00Z",
            "ended_at": "2026-12-02T00:01:00Z" if ended else None,
            "results_url": f"{self.url}/v1/messages/batches/msgbatch_hostile/results"
            if ended
            else None,
        }

    async def _json(
        self,
        writer: asyncio.StreamWriter,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> bool:
        return await self._send(writer, 200, json.dumps(body).encode(), headers)

    async def _error(
        self, writer: asyncio.StreamWriter, status: int, headers: dict[str, str]
    ) -> bool:
        body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
        return await self._send(writer, status, json.dumps(body).encode(), headers)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        content_type: str = "application/json",
    ) -> bool:
        reason = {200: "OK", 429: "Too Many Requests"}.get(status, "Error")
        head = [f"HTTP/1.1 {status} {reason}", f"content-type: {content_type}"]
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        head.append(f"content-length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        writer.write(body)
        await writer.drain()
        return True


@contextmanager
def running_hostile_server() -> Iterator[HostileServer]:
    """A hostile server on a free loopback port, in a background thread."""
    server = HostileServer()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stopping: asyncio.Future[None] | None = None

    async def main() -> None:
        nonlocal stopping
        stopping = loop.create_future()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        started.set()
        async with listener:
            await stopping
        # Answers still dripping or streaming end with the server.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def run() -> None:
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield server
    finally:
        assert stopping is not None
        loop.call_soon_threadsafe(stopping.set_result, None)
        thread.join(10)
