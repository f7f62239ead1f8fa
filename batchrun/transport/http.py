"""HTTP plumbing that the transport's senders share: the httpx clients a run sends on, the
in-process transport, the User-Agent, reading a body within a size cap, and the check that a
header value can be sent at all.

A run's requests go out on one httpx client made on first use (:class:`ClientPool`,
:func:`create_http_client`), which sends on aiohttp (:mod:`batchrun.transport.aio`); the
Messages POSTs are handed to that transport directly (:meth:`ClientPool.stream`,
:func:`post_stream`), as the client would send them. The built-in simulator is reached
without a socket, through :func:`in_process_transport`.

Bodies are read in pieces and decompressed here (gzip and deflate), never more than a cap at
a time: :func:`read_capped` stops once a body passes its cap, so an endless body or a gzip
bomb is cut off, not held in memory; :func:`stream_pieces` hands an event stream on as it
arrives, in bounded pieces.

Header values are checked before the first request (:func:`check_header_values`), because
httpx and h11 quote an unsendable value (a pasted line break, a typographic quote) in their
exception text, which would otherwise be stored as every request's error.
"""

from __future__ import annotations

import urllib.request
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from batchrun import __version__
from batchrun.errors import ConfigError
from batchrun.transport.aio import AiohttpTransport
from batchrun.transport.auth import secret_header_names
from batchrun.transport.endpoints import DEFAULT_CONNECT_TIMEOUT_S

# Sent with every request, so a gateway's logs can tell batchrun's traffic apart.
USER_AGENT = f"batchrun/{__version__}"
# zlib's window bits per content-encoding that the transport inflates itself, within the cap.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# The most a decompressed piece of a streamed body may be, so a gzip bomb arrives in pieces
# the assembler can refuse one by one.
_STREAM_PIECE_BYTES = 64 * 1024
# How requests reach a server: a socket (None) or an ASGI app in-process.
HttpTransport = httpx.AsyncBaseTransport


def check_header_values(
    headers: Mapping[str, str], *, endpoint: str, key_hint: str, secrets: Sequence[str] = ()
) -> None:
    """Raise ConfigError if a header value cannot be sent in HTTP/1.1 (only printable ASCII,
    spaces and tabs can). The message names the header and the position, never the value."""
    for name, value in headers.items():
        bad = next(
            (i for i, char in enumerate(value) if not (" " <= char <= "~" or char == "\t")),
            None,
        )
        if bad is None:
            continue
        char = value[bad]
        kind = (
            "a line break"
            if char in "\r\n"
            else ("a control character" if ord(char) < 0x80 else "a non-ASCII character")
        )
        where = f"character {bad + 1} of the {name} header for endpoint {endpoint}"
        fix = (
            f"check {key_hint}: copy the key again, without line breaks or typographic quotes"
            if name.lower() in secret_header_names() or value in secrets
            else "fix the header's value"
        )
        raise ConfigError(f"{where} is {kind}, which HTTP headers cannot carry; {fix}")


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read whole, or up to the size cap (``too_large``)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    too_large: bool = False


async def read_capped(response: httpx.Response, max_bytes: int) -> Answer:
    """The body in pieces, decompressed, stopping once it passes ``max_bytes``. gzip and
    deflate are decompressed here, never more than the cap at a time, so a small body that
    inflates to gigabytes (a gzip bomb) costs no more memory than the cap."""
    wbits = _WBITS.get(response.headers.get("content-encoding", "").strip().lower())
    raw_pieces = response.aiter_raw() if wbits is not None else response.aiter_bytes()
    inflate = zlib.decompressobj(wbits) if wbits is not None else None
    pieces: list[bytes] = []
    size = 0
    async for raw in raw_pieces:
        piece = raw
        if inflate is not None:
            try:
                piece = inflate.decompress(raw, max_bytes - size + 1)
            except zlib.error as exc:
                raise httpx.DecodingError(f"the compressed body is corrupt: {exc}") from exc
            if inflate.unconsumed_tail:
                # More output than the cap allows is waiting behind this piece.
                size = max_bytes + 1
        size += len(piece)
        pieces.append(piece)
        if size > max_bytes:
            return Answer(response.status_code, response.headers, b"".join(pieces), True)
    if inflate is not None:
        pieces.append(inflate.flush())
    return Answer(response.status_code, response.headers, b"".join(pieces))


async def stream_pieces(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it arrives, decompressed in pieces of at most ``_STREAM_PIECE_BYTES``."""
    wbits = _WBITS.get(response.headers.get("content-encoding", "").strip().lower())
    if wbits is None:
        async for piece in response.aiter_bytes():
            yield piece
        return
    inflate = zlib.decompressobj(wbits)
    async for raw in response.aiter_raw():
        data = raw
        while data:
            try:
                piece = inflate.decompress(data, _STREAM_PIECE_BYTES)
            except zlib.error as exc:
                raise httpx.DecodingError(f"the compressed body is corrupt: {exc}") from exc
            data = inflate.unconsumed_tail
            yield piece
    yield inflate.flush()


class ClientPool:
    """The httpx client a run sends on, made when the first request needs it (a run that
    sends nothing opens no connection and builds no TLS context, which costs milliseconds).

    It was several httpx clients of 8 connections each, because httpcore's pool looked at
    every connection for every request it assigned; on aiohttp
    (:class:`~batchrun.transport.aio.AiohttpTransport`) one client of any size costs the
    same per request, so one is made.

    :meth:`stream` hands a POST to that transport itself, doing what the httpx client would
    do around it without its per-request work (see there)."""

    def __init__(
        self, make: Callable[[], tuple[httpx.AsyncClient, httpx.AsyncBaseTransport | None]]
    ) -> None:
        """``make``: the client, and the transport :meth:`stream` may send on directly (None:
        every request goes through the client)."""
        self._make = make
        self._client: httpx.AsyncClient | None = None
        self._direct: httpx.AsyncBaseTransport | None = None
        # What the client would merge into every request, worked out once per value.
        self._headers: dict[tuple[tuple[str, str], ...], httpx.Headers] = {}
        self._urls: dict[str, httpx.URL] = {}
        self._timeout: dict[str, float | None] = {}

    @property
    def made(self) -> bool:
        """Whether the client was made (a request needed it)."""
        return self._client is not None

    def client(self) -> httpx.AsyncClient:
        """The client, made now if no request needed it yet."""
        if self._client is None:
            self._client, self._direct = self._make()
            self._timeout = self._client.timeout.as_dict()
        return self._client

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST on the client (an httpx client's ``post``, for bench/throughput.py)."""
        return await self.client().post(url, content=content, headers=headers)

    @asynccontextmanager
    async def stream(
        self, url: str, *, content: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """POST ``content`` and yield the answer with its body unread, closed afterwards:
        the client's ``stream("POST", ...)``.

        On the pool's own aiohttp transport the request goes to the transport directly, as
        the client would send it: its headers merged with the client's (worked out once per
        set of headers), its timeouts, its cookies sent and kept as the client keeps them
        (looked at only when the jar holds one, or the answer sets one); no redirect is
        followed either way, and there is no auth or hook to run. The client's own path
        (URL, header and cookie merging, redirect and auth handling, a cookie-jar pass on
        every answer) was a fifth of a worker's main thread. Through a proxy or an
        in-process app, the client sends."""
        client = self.client()
        direct = self._direct
        if direct is None:
            async with client.stream("POST", url, content=content, headers=headers) as response:
                yield response
            return
        request = httpx.Request(
            "POST",
            self._url(url),
            headers=self._merged(client, headers),
            content=content,
            extensions={"timeout": self._timeout},
        )
        cookies = client.cookies
        if cookies:
            cookies.set_cookie_header(request)
        response = await direct.handle_async_request(request)
        try:
            if "set-cookie" in response.headers or "set-cookie2" in response.headers:
                cookies.extract_cookies(response)
            yield response
        finally:
            await response.aclose()

    def _merged(self, client: httpx.AsyncClient, headers: Mapping[str, str]) -> httpx.Headers:
        key = tuple(headers.items())
        merged = self._headers.get(key)
        if merged is None:
            merged = httpx.Headers(client.headers)
            merged.update(headers)
            self._headers[key] = merged
        return merged

    def _url(self, url: str) -> httpx.URL:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client, self._direct = self._client, None, None
        if client is not None:
            await client.aclose()


@asynccontextmanager
async def client_for(http: httpx.AsyncClient | ClientPool) -> AsyncIterator[httpx.AsyncClient]:
    """The client to send one request on."""
    yield http.client() if isinstance(http, ClientPool) else http


@asynccontextmanager
async def post_stream(
    http: httpx.AsyncClient | ClientPool, url: str, *, content: bytes, headers: Mapping[str, str]
) -> AsyncIterator[httpx.Response]:
    """POST ``content`` on ``http`` and yield the answer with its body unread (closed
    afterwards): :meth:`ClientPool.stream`, or an httpx client's ``stream``."""
    if isinstance(http, ClientPool):
        async with http.stream(url, content=content, headers=headers) as response:
            yield response
    else:
        async with http.stream("POST", url, content=content, headers=headers) as response:
            yield response


def create_http_client(
    *,
    timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ClientPool:
    """One httpx client for ``max_connections`` concurrent requests, made on first use: on
    ``transport`` if given (the in-process simulator), else on aiohttp
    (:class:`~batchrun.transport.aio.AiohttpTransport`, one TLS context).

    When the environment names a proxy (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, as
    httpx reads them, ``NO_PROXY`` included), the client is httpx's own, which sends
    through it: httpx honours those variables only on its own transport, and a run that
    used to go through a company proxy must not start going around it. That path costs
    httpcore's CPU per request (see :mod:`batchrun.transport.aio`)."""
    timeout = httpx.Timeout(timeout_s, connect=min(DEFAULT_CONNECT_TIMEOUT_S, timeout_s))

    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )

    def make() -> tuple[httpx.AsyncClient, httpx.AsyncBaseTransport | None]:
        if transport is not None or _proxied():
            return httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport), None
        tls = httpx.create_ssl_context()
        direct = AiohttpTransport(max_connections=max_connections, tls=tls)
        return httpx.AsyncClient(timeout=timeout, limits=limits, transport=direct), direct

    return ClientPool(make)


def _proxied() -> bool:
    """Whether the environment names a proxy for any scheme (what httpx would use)."""
    return any(scheme != "no" for scheme in urllib.request.getproxies())


def in_process_transport(app: object) -> httpx.AsyncBaseTransport:
    """A transport that calls an ASGI app directly (the built-in simulator).

    App exceptions become 500 answers, as a real server would send, instead of escaping.
    """
    return httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
