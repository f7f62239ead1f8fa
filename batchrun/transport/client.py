"""The transport: the only module that imports httpx.

A :class:`MessagesClient` POSTs one Messages body and returns an Outcome value; every httpx
error becomes a Retryable here, once, so nothing above this module handles exceptions from
the network. One attempt is bounded as a whole: ``timeout_s`` covers connecting, sending and
the entire body (a server dripping one byte at a time cannot hold it longer), and the body is
read in pieces up to ``max_response_bytes`` after decompression (an endless body or a gzip
bomb is cut off, not held in memory).

The API key stays here. Header values are checked before the first request, because httpx
and h11 quote an unsendable value (a pasted line break, a typographic quote) in their
exception text, which would otherwise be stored as every request's error. And the key is
cut out of every answer (headers and body, success or error) and of failure text before
they go anywhere, because some gateways echo the key they were given ("invalid API key
sk-...", or the key as a request-id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import orjson
from aiolimiter import AsyncLimiter

from batchrun import __version__
from batchrun.errors import ConfigError
from batchrun.records import Fatal, Outcome, Retryable, error_body
from batchrun.transport.auth import (
    RequestHeaders,
    redact,
    redact_bytes,
    secret_header_names,
)
from batchrun.transport.classify import classify_response
from batchrun.transport.endpoints import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    Endpoint,
)

log = logging.getLogger(__name__)

# The Messages parameters that /v1/messages/count_tokens accepts; it refuses the others
# (max_tokens, temperature, metadata...).
_COUNT_TOKENS_KEYS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
)
# Sent with every request, so a gateway's logs can tell batchrun's traffic apart.
USER_AGENT = f"batchrun/{__version__}"
# zlib's window bits per content-encoding that the transport inflates itself, within the cap.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# What an errored result keeps of an answer that was too large.
_KEPT_OF_TOO_LARGE = 64 * 1024
# How requests reach a server: a socket (None) or an ASGI app in-process.
HttpTransport = httpx.AsyncBaseTransport
# Connections per httpx client in a ClientPool.
CONNECTIONS_PER_CLIENT = 8


class MessagesClient:
    """Sends Messages requests to one endpoint."""

    def __init__(
        self,
        http: httpx.AsyncClient | ClientPool,
        *,
        endpoint: Endpoint,
        headers: RequestHeaders,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        """``timeout_s`` bounds each attempt as a whole; answers over ``max_response_bytes``
        (decompressed) are cut off and the request errors."""
        self._http = http
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._count_tokens_pacer = AsyncLimiter(1, 60.0 / endpoint.count_tokens_rpm)
        self._url = endpoint.messages_url
        self._count_tokens_url = endpoint.messages_url.rstrip("/") + "/count_tokens"
        self._headers = {"user-agent": USER_AGENT, **headers.headers}
        self._key_hint = endpoint.api_key_env or "the endpoint's credentials"
        self._extra_body = dict(endpoint.extra_body)
        self._secrets = headers.secrets
        check_header_values(
            self._headers, endpoint=endpoint.name, key_hint=self._key_hint, secrets=self._secrets
        )

    @property
    def key_hint(self) -> str:
        return self._key_hint

    async def send(self, params_json: str) -> Outcome:
        """POST ``params_json`` and classify the answer (never raises for network trouble)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await _post(
                    self._http,
                    self._url,
                    content=self._body(params_json),
                    headers=self._headers,
                    max_bytes=self._max_response_bytes,
                )
        except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
            # The attempt's own bound, or httpx's for one read: the same thing to a user.
            detail = f"no complete answer within {self._timeout_s:g} s (timeout_s)"
            return Retryable(reason=detail, error=error_body("timeout_error", detail))
        except httpx.TimeoutException as exc:
            return self._transport_failure("timeout_error", "could not connect in time", exc)
        except httpx.HTTPError as exc:
            return self._transport_failure("api_error", "the connection failed", exc)
        if answer.too_large:
            return self._too_large(answer)
        headers = {name: self._redact_text(value) for name, value in answer.headers.items()}
        return classify_response(answer.status, headers, self._redact_bytes(answer.body))

    def _too_large(self, answer: _Answer) -> Fatal:
        limit = self._max_response_bytes
        detail = (
            f"the answer (HTTP {answer.status}) was larger than {limit:,} bytes "
            "(max_response_bytes); it was cut off, and its first bytes are kept"
        )
        kept = self._redact_bytes(answer.body[:_KEPT_OF_TOO_LARGE])
        return Fatal(
            error_body("api_error", detail), answer.status, raw_body=kept.decode(errors="replace")
        )

    def _transport_failure(self, error_type: str, what: str, exc: httpx.HTTPError) -> Retryable:
        name = type(exc).__name__
        detail = f"{what} ({name}: {exc})" if str(exc) else f"{what} ({name})"
        detail = self._redact_text(detail)
        return Retryable(reason=detail, error=error_body(error_type, detail))

    def _redact_bytes(self, body: bytes) -> bytes:
        return redact_bytes(body, self._secrets)

    def _redact_text(self, text: str) -> str:
        return redact(text, self._secrets)

    async def count_tokens(self, params_json: str) -> int | None:
        """The endpoint's own input-token count for a request, or None if it cannot say
        (no such endpoint, an error, a timeout): the caller falls back to its estimate."""
        params = json.loads(params_json)
        body = {key: value for key, value in params.items() if key in _COUNT_TOKENS_KEYS}
        try:
            # count_tokens has its own rate limit (100 a minute at Anthropic's first tier):
            # one call per interval, without bursts.
            async with self._count_tokens_pacer, _client_for(self._http) as client:
                response = await client.post(
                    self._count_tokens_url,
                    content=json.dumps(body).encode(),
                    headers=self._headers,
                )
        except httpx.HTTPError as exc:
            log.debug("count_tokens failed: %s", type(exc).__name__)
            return None
        if response.status_code != 200:
            log.debug("count_tokens answered HTTP %d", response.status_code)
            return None
        try:
            counted = response.json().get("input_tokens")
        except (ValueError, AttributeError):
            return None
        return counted if isinstance(counted, int) and counted > 0 else None

    def _body(self, params_json: str) -> bytes:
        """The request body: the stored params, on top of the endpoint's ``extra_body``.

        Without an ``extra_body`` the stored JSON is sent as it is, unparsed; with one, the
        request's own params win on a conflict.
        """
        if not self._extra_body:
            return params_json.encode()
        return orjson.dumps({**self._extra_body, **orjson.loads(params_json)})


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
class _Answer:
    """An HTTP answer read whole, or up to the size cap (``too_large``)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    too_large: bool = False


async def _read(response: httpx.Response, max_bytes: int) -> _Answer:
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
            return _Answer(response.status_code, response.headers, b"".join(pieces), True)
    if inflate is not None:
        pieces.append(inflate.flush())
    return _Answer(response.status_code, response.headers, b"".join(pieces))


async def _post(
    http: httpx.AsyncClient | ClientPool,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    max_bytes: int,
) -> _Answer:
    async with (
        _client_for(http) as client,
        client.stream("POST", url, content=content, headers=headers) as response,
    ):
        return await _read(response, max_bytes)


@asynccontextmanager
async def _client_for(http: httpx.AsyncClient | ClientPool) -> AsyncIterator[httpx.AsyncClient]:
    """The client to send one request on: a pool's least busy one, held while in use."""
    if isinstance(http, ClientPool):
        async with http.least_busy() as client:
            yield client
    else:
        yield http


class ClientPool:
    """Several httpx clients used as one, each with a few connections.

    httpcore's connection pool looks at every connection for every request it assigns, on
    every event, so its cost grows with connections × requests in flight: with 64 connections
    one client spends most of a fast run there (bench/throughput.py: 400 requests/s with one
    client of 64 connections, 740 with eight of 8). Each request goes to the client with the
    fewest requests in flight.
    """

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        self._clients = clients
        self._in_flight = [0] * len(clients)

    @asynccontextmanager
    async def least_busy(self) -> AsyncIterator[httpx.AsyncClient]:
        """The client with the fewest requests in flight, counted as busy while held."""
        index = min(range(len(self._clients)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            yield self._clients[index]
        finally:
            self._in_flight[index] -= 1

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST on the least busy client (an httpx client's ``post``, for bench/throughput.py)."""
        async with self.least_busy() as client:
            return await client.post(url, content=content, headers=headers)

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for client in self._clients:
            await client.aclose()


def create_http_client(
    *,
    timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ClientPool:
    """HTTP clients for ``max_connections`` concurrent requests, in shards of
    ``CONNECTIONS_PER_CLIENT`` (one client for an in-process transport)."""
    timeout = httpx.Timeout(timeout_s, connect=min(DEFAULT_CONNECT_TIMEOUT_S, timeout_s))
    sizes = [max_connections] if transport is not None else _shard_sizes(max_connections)
    return ClientPool(
        [
            httpx.AsyncClient(
                timeout=timeout,
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                transport=transport,
            )
            for size in sizes
        ]
    )


def _shard_sizes(max_connections: int) -> list[int]:
    full, rest = divmod(max_connections, CONNECTIONS_PER_CLIENT)
    return [CONNECTIONS_PER_CLIENT] * full + ([rest] if rest else [])


def in_process_transport(app: object) -> httpx.AsyncBaseTransport:
    """A transport that calls an ASGI app directly (the built-in simulator).

    App exceptions become 500 answers, as a real server would send, instead of escaping.
    """
    return httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
