"""The aiohttp transport under httpx: what a server does wrong reaches the caller as the
httpx exception it already handles, connections are bounded and reused, and a body left
unread closes its connection. The server is a real one on 127.0.0.1 that writes raw bytes."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import trustme

from batchrun.transport.aio import MAX_HEADERS, AiohttpTransport
from batchrun.transport.http import create_http_client, read_capped

pytestmark = pytest.mark.asyncio

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Accepts connections and hands each request to ``answer``; counts connections."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                await self.answer(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.open_now -= 1
            writer.close()


@asynccontextmanager
async def raw_server(
    answer: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, RawServer]]:
    state = RawServer(answer)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}/v1/messages", state
    finally:
        server.close()


@asynccontextmanager
async def client(
    max_connections: int = 8, tls: ssl.SSLContext | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    transport = AiohttpTransport(max_connections=max_connections, tls=tls)
    async with httpx.AsyncClient(transport=transport, timeout=5) as http:
        yield http


def answering(raw: bytes, *, close: bool = False) -> Handler:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        if close:
            writer.close()

    return answer


async def test_answers_and_their_headers_arrive_as_sent() -> None:
    raw = (
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\nretry-after: 7\r\n"
        b"x-note: a\r\nx-note: b\r\n\r\n{}"
    )
    async with raw_server(answering(raw)) as (url, _), client() as http:
        response = await http.post(url, content=b"{}")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.headers.get_list("x-note") == ["a", "b"]
    assert response.content == b"{}"


@pytest.mark.parametrize(
    ("raw", "expected", "text"),
    [
        (b"", httpx.RemoteProtocolError, "Server disconnected without sending a response."),
        (b"HELLO THERE\r\n\r\n", httpx.RemoteProtocolError, ""),
        (
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"x-h%d: v\r\n" % i for i in range(MAX_HEADERS + 10))
            + b"content-length: 2\r\n\r\n{}",
            httpx.RemoteProtocolError,
            "",
        ),
        (
            b"HTTP/1.1 200 OK\r\nx-long: " + b"a" * 100_000 + b"\r\ncontent-length: 2\r\n\r\n{}",
            httpx.RemoteProtocolError,
            "",
        ),
        (
            b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial',
            httpx.RemoteProtocolError,
            "",
        ),
    ],
    ids=["closed-before-answer", "not-http", "too-many-headers", "huge-header", "body-cut"],
)
async def test_what_a_server_does_wrong_is_an_httpx_exception(
    raw: bytes, expected: type[httpx.HTTPError], text: str
) -> None:
    async with raw_server(answering(raw, close=True)) as (url, _), client() as http:
        with pytest.raises(expected) as raised:
            await http.post(url, content=b"{}")
    if text:
        assert str(raised.value) == text


async def test_a_port_nobody_listens_on_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"http://127.0.0.1:{port}/v1/messages", content=b"{}")


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; the client gives up first

    async with raw_server(silent) as (url, _), client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url, content=b"{}", timeout=httpx.Timeout(5, read=0.2))


async def test_requests_at_once_never_open_more_than_max_connections() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.02)
        writer.write(OK)
        await writer.drain()

    async with raw_server(slow) as (url, state), client(max_connections=4) as http:
        answers = await asyncio.gather(*(http.post(url, content=b"{}") for _ in range(40)))
    assert [answer.status_code for answer in answers] == [200] * 40
    assert state.most_open <= 4
    assert state.connections <= 4


async def test_a_body_read_to_its_end_keeps_the_connection_and_one_cut_short_closes_it() -> None:
    # 8 MB: far more than aiohttp buffers, so a body cut short is still on the wire (a body
    # received whole gives its connection back at once, read or not).
    size = 8_000_000
    big = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size
    async with raw_server(answering(big)) as (url, state), client() as http:
        for _ in range(3):
            async with http.stream("POST", url, content=b"{}") as response:
                whole = await read_capped(response, 10_000_000)
            assert len(whole.body) == size and not whole.too_large
        assert state.connections == 1
        async with http.stream("POST", url, content=b"{}") as response:
            cut = await read_capped(response, 1_000)
        assert cut.too_large
        async with http.stream("POST", url, content=b"{}") as response:
            whole = await read_capped(response, 10_000_000)
        # The cut body's connection was closed, never read from again mid-body.
        assert len(whole.body) == size
        assert state.connections == 2


async def test_a_compressed_body_arrives_compressed_for_the_capped_reader() -> None:
    # aiohttp's own decompression is off: the capped reader inflates within its cap.
    body = gzip.compress(b"y" * 5_000_000)
    raw = (
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(body)
    ) + body
    async with (
        raw_server(answering(raw)) as (url, _),
        client() as http,
        http.stream("POST", url, content=b"{}") as response,
    ):
        cut = await read_capped(response, 10_000)
    assert cut.too_large
    assert len(cut.body) <= 10_001 + 64 * 1024


async def test_a_redirect_is_an_answer_not_followed() -> None:
    raw = (
        b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://example.invalid/steal\r\n"
        b"content-length: 0\r\n\r\n"
    )
    async with raw_server(answering(raw)) as (url, state), client() as http:
        answer = await http.post(url, content=b"{}", headers={"x-api-key": "sk-secret"})
    assert answer.status_code == 307
    assert answer.headers["location"] == "http://example.invalid/steal"
    assert state.connections == 1


def tls_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1 from a fresh authority, and a
    client context that trusts that authority (as httpx.create_ssl_context builds them)."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server)
    trusting = httpx.create_ssl_context()
    authority.configure_trust(trusting)
    return server, trusting


async def test_https_answers_arrive_and_connections_are_reused() -> None:
    server_tls, trusting = tls_pair()
    async with (
        raw_server(answering(OK), tls=server_tls) as (url, state),
        client(tls=trusting) as http,
    ):
        answers = [await http.post(url, content=b"{}") for _ in range(3)]
    assert url.startswith("https://")
    assert [answer.status_code for answer in answers] == [200] * 3
    assert answers[0].content == b"{}"
    assert state.connections == 1


async def test_a_certificate_nobody_vouches_for_is_a_connect_error() -> None:
    server_tls, _ = tls_pair()
    # The system's authorities (httpx's default context) do not know this one.
    async with (
        raw_server(answering(OK), tls=server_tls) as (url, state),
        client(tls=httpx.create_ssl_context()) as http,
    ):
        with pytest.raises(httpx.ConnectError) as raised:
            await http.post(url, content=b"{}", headers={"x-api-key": "sk-secret"})
    assert "certificate" in str(raised.value).lower()
    assert state.connections <= 1


async def test_a_proxy_named_in_the_environment_is_used_as_httpx_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The proxy is a raw server: an HTTP proxy gets the request in absolute form.
    async with raw_server(answering(OK)) as (proxy_url, proxy):
        for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1/messages"))
        monkeypatch.setenv("no_proxy", "")
        async with create_http_client(timeout_s=5, max_connections=4) as pool:
            answer = await pool.post(
                "http://api.example.invalid/v1/messages", content=b"{}", headers={}
            )
    assert answer.status_code == 200
    assert proxy.heads[0].startswith(b"POST http://api.example.invalid/v1/messages HTTP/1.1")


def _sent_headers(head: bytes) -> list[tuple[str, str]]:
    """A request head's header lines, names lowered, in order."""
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines if line)
    ]


async def test_the_pools_own_path_sends_what_the_httpx_client_would() -> None:
    # ClientPool.stream hands requests to the aiohttp transport itself; the server must see
    # the same request as through the client's own stream().
    headers = {"x-api-key": "sk-a", "anthropic-version": "2023-06-01", "user-agent": "ua/1"}
    async with (
        raw_server(answering(OK)) as (url, state),
        create_http_client(timeout_s=5, max_connections=4) as pool,
    ):
        async with pool.client().stream("POST", url, content=b"{}", headers=headers) as answer:
            await answer.aread()
        async with pool.stream(url, content=b'{"a":1}', headers=headers) as answer:
            body = await answer.aread()
    assert answer.status_code == 200 and body == b"{}"
    through_client, direct = (_sent_headers(head) for head in state.heads)
    assert sorted(direct) == sorted(
        (name, "7" if name == "content-length" else value) for name, value in through_client
    )
    assert ("x-api-key", "sk-a") in direct


async def test_the_pools_own_path_keeps_and_sends_cookies_as_the_client_does() -> None:
    set_cookie = b"HTTP/1.1 200 OK\r\nset-cookie: lb=node-7; Path=/\r\ncontent-length: 2\r\n\r\n{}"
    answers = iter([set_cookie, OK, OK])

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(next(answers))
        await writer.drain()

    async with (
        raw_server(answer) as (url, state),
        create_http_client(timeout_s=5, max_connections=4) as pool,
    ):
        for _ in range(2):
            async with pool.stream(url, content=b"{}", headers={}) as response:
                await response.aread()
        assert pool.client().cookies.get("lb") == "node-7"
        async with pool.client().stream("POST", url, content=b"{}") as response:
            await response.aread()
    first, second, through_client = (dict(_sent_headers(head)) for head in state.heads)
    assert "cookie" not in first
    assert second["cookie"] == through_client["cookie"] == "lb=node-7"


async def test_the_pools_own_path_keeps_the_clients_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; the client gives up first

    async with (
        raw_server(silent) as (url, _),
        create_http_client(timeout_s=0.3, max_connections=4) as pool,
    ):
        with pytest.raises(httpx.ReadTimeout):
            async with pool.stream(url, content=b"{}", headers={}):
                pass
