"""Slowloris, over real sockets: a request line or a body that stops coming is cut off after
its (here short) timeout, and connections past the cap are answered 503 at once, while the
server keeps serving."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchrun.server.running import ServeSettings
from tests.conftest import request_line
from tests.server.serving import KEY_A, running_server, server_env

BATCHES = "/v1/messages/batches"
# The test server's limits: short, so the tests take about a second each.
HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 4
# Far longer than any limit above: a connection still open then was never cut off.
PATIENCE_S = 15.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int]]:
    with running_server(
        f"sqlite:///{tmp_path / 'batchrun.db'}",
        server_env(tmp_path),
        workers=0,
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
    ) as (url, _server):
        yield url, int(url.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)


def until_closed(raw: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    answer = b""
    while chunk := raw.recv(65536):
        answer += chunk
    return answer, time.monotonic() - started


def read_answer(raw: socket.socket) -> bytes:
    """One whole answer with a content-length: its head, then its body."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += raw.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += raw.recv(65536)
    return head + b"\r\n\r\n" + body


def served_now(url: str) -> bool:
    with httpx.Client(base_url=url, headers={"x-api-key": KEY_A}, timeout=PATIENCE_S) as client:
        return client.get(BATCHES).status_code == 200


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /v1/mess", b"GET /v1/messages/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api"],
    ids=["nothing", "part of the request line", "part of the headers"],
)
def test_a_request_head_that_stops_coming_is_answered_408_and_closed(
    served: tuple[str, int], sent: bytes
) -> None:
    url, port = served
    with connect(port) as raw:
        raw.sendall(sent)
        answer, took_s = until_closed(raw)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert HEADER_TIMEOUT_S * 0.8 <= took_s < PATIENCE_S
    assert served_now(url)


def test_the_next_request_on_a_kept_alive_connection_has_the_same_deadline(
    served: tuple[str, int],
) -> None:
    _url, port = served
    with connect(port) as raw:
        raw.sendall(
            f"GET {BATCHES} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY_A}\r\n\r\n".encode()
        )
        first = read_answer(raw)
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        raw.sendall(b"GET /v1/mess")
        answer, took_s = until_closed(raw)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert HEADER_TIMEOUT_S * 0.8 <= took_s < PATIENCE_S


def test_a_head_trickled_a_byte_at_a_time_is_cut_off_at_the_deadline_not_at_each_pause(
    served: tuple[str, int],
) -> None:
    _url, port = served
    head = b"GET /v1/messages/batches HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with connect(port) as raw:
        started = time.monotonic()
        for byte in head:
            try:
                raw.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(HEADER_TIMEOUT_S / 10)
        answer, _ = until_closed(raw)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert time.monotonic() - started < HEADER_TIMEOUT_S * 6


def test_a_body_that_stops_coming_is_cut_off_and_nothing_is_stored(
    served: tuple[str, int],
) -> None:
    url, port = served
    body = json.dumps({"requests": [request_line("a")]}).encode()
    head = (
        f"POST {BATCHES} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY_A}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    with connect(port) as raw:
        raw.sendall(head + body[:10])
        answer, took_s = until_closed(raw)
    assert not answer.startswith(b"HTTP/1.1 200"), answer
    assert BODY_TIMEOUT_S * 0.8 <= took_s < PATIENCE_S
    with httpx.Client(base_url=url, headers={"x-api-key": KEY_A}, timeout=PATIENCE_S) as client:
        assert client.get(BATCHES).json()["data"] == []


def test_a_slow_body_that_keeps_coming_is_read_whole(served: tuple[str, int]) -> None:
    url, port = served
    body = json.dumps({"requests": [request_line("slow")]}).encode()
    head = (
        f"POST {BATCHES} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY_A}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    pieces = [body[i : i + len(body) // 5 + 1] for i in range(0, len(body), len(body) // 5 + 1)]
    with connect(port) as raw:
        raw.sendall(head)
        # Longer in all than the body timeout, never pausing as long.
        for piece in pieces:
            time.sleep(BODY_TIMEOUT_S / 3)
            raw.sendall(piece)
        answer = raw.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert len(pieces) * BODY_TIMEOUT_S / 3 > BODY_TIMEOUT_S
    assert served_now(url)


def test_connections_past_the_cap_are_answered_503_at_once_and_served_again_after(
    served: tuple[str, int],
) -> None:
    url, port = served
    held = [connect(port) for _ in range(MAX_CONNECTIONS)]
    try:
        for raw in held:
            raw.sendall(b"GET /v1/mess")
        # The held ones are open on the server's side before the next one comes.
        time.sleep(0.1)
        with connect(port) as extra:
            started = time.monotonic()
            answer, _ = until_closed(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"too many connections" in answer
        assert time.monotonic() - started < HEADER_TIMEOUT_S
    finally:
        for raw in held:
            raw.close()
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            if served_now(url):
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server never served again"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"header_timeout_s": 0.0}, "--header-timeout must be more than 0"),
        ({"body_timeout_s": -1.0}, "--body-timeout must be more than 0"),
        ({"max_connections": 0}, "--max-connections must be 1 or more"),
    ],
)
def test_limits_out_of_range_are_refused_naming_the_flag(
    changes: dict[str, Any], fragment: str
) -> None:
    from batchrun.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        ServeSettings(**changes).connection_limits()
