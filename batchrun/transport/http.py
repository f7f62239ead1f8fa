"""HTTP plumbing that the transport's senders share: the httpx clients a run sends on, the
in-process transport, the User-Agent, reading a body within a size cap, and the check that a
header value can be sent at all.

A run's requests go out on a :class:`ClientPool`: several httpx clients of
``CONNECTIONS_PER_CLIENT`` connections each, made as they are needed and sharing one TLS
context (:func:`create_http_client`). The built-in simulator is reached without a socket,
through :func:`in_process_transport`.

Bodies are read in pieces and decompressed here (gzip and deflate), never more than a cap at
a time: :func:`read_capped` stops once a body passes its cap, so an endless body or a gzip
bomb is cut off, not held in memory; :func:`stream_pieces` hands an event stream on as it
arrives, in bounded pieces.

Header values are checked before the first request (:func:`check_header_values`), because
httpx and h11 quote an unsendable value (a pasted line break, a typographic quote) in their
exception text, which would otherwise be stored as every request's error.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from batchrun import __version__
from batchrun.errors import ConfigError
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
# Connections per httpx client in a ClientPool.
CONNECTIONS_PER_CLIENT = 8


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
    """Several httpx clients used as one, each with a few connections.

    httpcore's connection pool looks at every connection for every request it assigns, on
    every event, so its cost grows with connections × requests in flight: with 64 connections
    one client spends most of a fast run there (bench/throughput.py: 400 requests/s with one
    client of 64 connections, 740 with eight of 8). Each request goes to the client with the
    fewest requests in flight.

    Clients are made when they are needed (when every client made so far is full), up to
    ``len(sizes)`` of them: a run allowed 4,096 requests in flight but sending a few dozen
    at a time makes a handful, not 512 clients with a TLS context each.
    """

    def __init__(self, make: Callable[[int], httpx.AsyncClient], sizes: Sequence[int]) -> None:
        """``make(n)`` makes a client of ``n`` connections; ``sizes``: the connections of
        each client the pool may make, in order."""
        self._make = make
        self._sizes = list(sizes)
        self._clients: list[httpx.AsyncClient] = []
        self._in_flight: list[int] = []

    @asynccontextmanager
    async def least_busy(self) -> AsyncIterator[httpx.AsyncClient]:
        """The client with the fewest requests in flight, counted as busy while held."""
        index = self._pick()
        self._in_flight[index] += 1
        try:
            yield self._clients[index]
        finally:
            self._in_flight[index] -= 1

    def _pick(self) -> int:
        if self._clients:
            index = min(range(len(self._clients)), key=self._in_flight.__getitem__)
            if self._in_flight[index] < self._sizes[index] or len(self._clients) == len(
                self._sizes
            ):
                return index
        self._clients.append(self._make(self._sizes[len(self._clients)]))
        self._in_flight.append(0)
        return len(self._clients) - 1

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST on the least busy client (an httpx client's ``post``, for bench/throughput.py)."""
        async with self.least_busy() as client:
            return await client.post(url, content=content, headers=headers)

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for client in self._clients:
            await client.aclose()


@asynccontextmanager
async def client_for(http: httpx.AsyncClient | ClientPool) -> AsyncIterator[httpx.AsyncClient]:
    """The client to send one request on: a pool's least busy one, held while in use."""
    if isinstance(http, ClientPool):
        async with http.least_busy() as client:
            yield client
    else:
        yield http


def create_http_client(
    *,
    timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ClientPool:
    """HTTP clients for ``max_connections`` concurrent requests, in shards of
    ``CONNECTIONS_PER_CLIENT`` made as needed (one client for an in-process transport), all
    sharing one TLS context (making one costs milliseconds of CPU)."""
    timeout = httpx.Timeout(timeout_s, connect=min(DEFAULT_CONNECT_TIMEOUT_S, timeout_s))
    sizes = [max_connections] if transport is not None else _shard_sizes(max_connections)
    tls: list[ssl.SSLContext] = []

    def make(size: int) -> httpx.AsyncClient:
        if transport is None and not tls:
            tls.append(httpx.create_ssl_context())
        return httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            transport=transport,
            verify=tls[0] if tls else True,
        )

    return ClientPool(make, sizes)


def _shard_sizes(max_connections: int) -> list[int]:
    full, rest = divmod(max_connections, CONNECTIONS_PER_CLIENT)
    return [CONNECTIONS_PER_CLIENT] * full + ([rest] if rest else [])


def in_process_transport(app: object) -> httpx.AsyncBaseTransport:
    """A transport that calls an ASGI app directly (the built-in simulator).

    App exceptions become 500 answers, as a real server would send, instead of escaping.
    """
    return httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
