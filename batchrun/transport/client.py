"""The transport: the only module that imports httpx.

A :class:`MessagesClient` POSTs one Messages body and returns an Outcome value; every httpx
error becomes a Retryable here, once, so nothing above this module handles exceptions from
the network. One attempt is bounded as a whole: ``timeout_s`` covers connecting, sending and
the entire body (a server dripping one byte at a time cannot hold it longer), and the body is
read in pieces up to ``max_response_bytes`` after decompression (an endless body or a gzip
bomb is cut off, not held in memory).

Long generations are streamed (``transport.streaming`` says when): the request goes out with
``"stream": true`` and the server-sent events are assembled, as they arrive, into the Message
a non-streamed call would have returned, which is then classified like a 200 JSON body. For
such a request ``timeout_s`` bounds the wait for the next event that carries part of the
message (pings do not count), not the whole attempt: a healthy stream may last an hour, a
stream that stops progressing, or only pings, is cut after ``timeout_s``. An ``error``
event counts as the HTTP status of its error type; a stream that ends before
``message_stop``, or sends an event that does not fit, is worth another attempt.

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
import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

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
from batchrun.transport.classify import (
    MAX_REQUEST_ID_CHARS,
    classify_response,
    status_for_error_type,
)
from batchrun.transport.endpoints import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    Endpoint,
)
from batchrun.transport.streaming import (
    MessageAssembler,
    StreamBroken,
    StreamComplete,
    StreamEnd,
    StreamError,
    StreamTooLarge,
    message_json,
    should_stream,
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
# What an errored result keeps of an answer that was too large (or of a broken stream).
_KEPT_OF_TOO_LARGE = 64 * 1024
# The most a decompressed piece of a streamed body may be, so a gzip bomb arrives in pieces
# the assembler can refuse one by one.
_STREAM_PIECE_BYTES = 64 * 1024
_EVENT_STREAM = "text/event-stream"
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
        """``timeout_s`` bounds each attempt as a whole (a streamed one: the wait for each
        event that carries part of the message); answers over ``max_response_bytes``
        (decompressed; for a stream, the assembled message) are cut off and the request
        errors. Requests are streamed by the endpoint's ``stream_threshold_tokens``."""
        self._http = http
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._count_tokens_pacer = AsyncLimiter(1, 60.0 / endpoint.count_tokens_rpm)
        self._url = endpoint.messages_url
        self._count_tokens_url = endpoint.messages_url.rstrip("/") + "/count_tokens"
        self._headers = {"user-agent": USER_AGENT, **headers.headers}
        self._key_hint = endpoint.api_key_env or "the endpoint's credentials"
        self._extra_body = dict(endpoint.extra_body)
        self._stream_threshold_tokens = endpoint.stream_threshold_tokens
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
            params: dict[str, Any] = orjson.loads(params_json)
        except orjson.JSONDecodeError:
            params = {}  # not for this module to judge: sent as it is
        if should_stream(params, self._stream_threshold_tokens):
            return await self._send_streamed(params)
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await _post(
                    self._http,
                    self._url,
                    content=self._body(params_json, params),
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
        return self._classified(answer)

    def _classified(self, answer: Answer) -> Outcome:
        if answer.too_large:
            return self._too_large(answer)
        headers = {name: self._redact_text(value) for name, value in answer.headers.items()}
        return classify_response(answer.status, headers, self._redact_bytes(answer.body))

    async def _send_streamed(self, params: dict[str, Any]) -> Outcome:
        """Send with ``"stream": true``; ``timeout_s`` bounds the wait for each event that
        carries part of the message, not the whole attempt."""
        body = orjson.dumps({**self._extra_body, **params, "stream": True})
        loop = asyncio.get_running_loop()
        progress = _Progress()
        try:
            async with asyncio.timeout(self._timeout_s) as deadline:

                def progressed() -> None:
                    deadline.reschedule(loop.time() + self._timeout_s)

                answer = await _post_streamed(
                    self._http,
                    self._url,
                    content=body,
                    headers=self._headers,
                    max_bytes=self._max_response_bytes,
                    progress=progress,
                    progressed=progressed,
                )
        except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
            if progress.streaming:
                detail = (
                    f"the stream stalled: no event within {self._timeout_s:g} s after "
                    f"{progress.events} events (timeout_s)"
                )
            else:
                detail = f"no answer within {self._timeout_s:g} s (timeout_s)"
            return Retryable(
                reason=detail,
                error=error_body("timeout_error", detail),
                raw_body=self._kept(progress),
            )
        except httpx.TimeoutException as exc:
            return self._transport_failure("timeout_error", "could not connect in time", exc)
        except httpx.HTTPError as exc:
            if progress.streaming:
                return self._stream_outcome(
                    progress.headers,
                    StreamBroken(f"the stream was cut after {progress.events} events"),
                    progress,
                    exc,
                )
            return self._transport_failure("api_error", "the connection failed", exc)
        if isinstance(answer, Answer):
            # Not an event stream: an error status, or a server that ignored "stream".
            return self._classified(answer)
        return self._stream_outcome(progress.headers, answer, progress)

    def _stream_outcome(
        self,
        raw_headers: Mapping[str, str],
        end: StreamEnd,
        progress: _Progress,
        exc: httpx.HTTPError | None = None,
    ) -> Outcome:
        """What a streamed answer that ended with ``end`` means: its Message (or its error
        event) classified exactly as the same answer unstreamed would be."""
        headers = {name: self._redact_text(value) for name, value in raw_headers.items()}
        match end:
            case StreamComplete(message=message):
                return classify_response(200, headers, self._redact_bytes(message_json(message)))
            case StreamError(body=error):
                error_type = str(error["error"].get("type", ""))
                status = status_for_error_type(error_type)
                outcome = classify_response(
                    status, headers, self._redact_bytes(orjson.dumps(error))
                )
                if isinstance(outcome, Retryable):
                    reason = f"error event in the stream: {error_type} (HTTP {status} unstreamed)"
                    outcome = replace(outcome, reason=self._redact_text(reason))
                return outcome
            case StreamTooLarge(limit_bytes=limit):
                detail = (
                    f"the streamed message grew past {limit:,} bytes (max_response_bytes); "
                    "it was cut off, and the first bytes of the stream are kept"
                )
                return Fatal(error_body("api_error", detail), 200, raw_body=self._kept(progress))
            case StreamBroken(reason=reason):
                if exc is not None:
                    name = type(exc).__name__
                    reason = f"{reason} ({name}: {exc})" if str(exc) else f"{reason} ({name})"
                reason = self._redact_text(reason)
                request_id = headers.get("request-id") or headers.get("x-request-id")
                request_id = request_id and request_id[:MAX_REQUEST_ID_CHARS]
                return Retryable(
                    reason=reason,
                    error=error_body("api_error", reason, request_id),
                    raw_body=self._kept(progress),
                )

    def _too_large(self, answer: Answer) -> Fatal:
        limit = self._max_response_bytes
        detail = (
            f"the answer (HTTP {answer.status}) was larger than {limit:,} bytes "
            "(max_response_bytes); it was cut off, and its first bytes are kept"
        )
        kept = self._redact_bytes(answer.body[:_KEPT_OF_TOO_LARGE])
        return Fatal(
            error_body("api_error", detail), answer.status, raw_body=kept.decode(errors="replace")
        )

    def _kept(self, progress: _Progress) -> str | None:
        """The first bytes of a stream, as an errored result keeps them (keys cut out)."""
        if not progress.head:
            return None
        return self._redact_bytes(bytes(progress.head)).decode(errors="replace")

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

    def _body(self, params_json: str, params: Mapping[str, Any]) -> bytes:
        """The request body: the stored params, on top of the endpoint's ``extra_body``.

        Without an ``extra_body`` the stored JSON is sent as it is, not re-encoded; with one,
        the request's own params win on a conflict.
        """
        return request_body(params_json, params, self._extra_body)


def request_body(
    params_json: str, params: Mapping[str, Any] | None, extra_body: Mapping[str, Any]
) -> bytes:
    """A request's body as an endpoint receives it (the Messages API, or a line of a provider
    batch): the stored params on top of the endpoint's ``extra_body``, the request's own
    winning; without an ``extra_body`` the stored JSON as it is, not re-encoded."""
    if not extra_body:
        return params_json.encode()
    if params is None:
        params = orjson.loads(params_json)
    return orjson.dumps({**extra_body, **params})


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


@dataclass
class _Progress:
    """How far a streamed answer got: its headers, once an event stream began, the events
    that carried part of the message, and the first bytes (kept if it fails)."""

    headers: Mapping[str, str] = field(default_factory=dict)
    streaming: bool = False
    events: int = 0
    head: bytearray = field(default_factory=bytearray)

    def keep(self, piece: bytes) -> None:
        room = _KEPT_OF_TOO_LARGE - len(self.head)
        if room > 0:
            self.head += piece[:room]


async def _post_streamed(
    http: httpx.AsyncClient | ClientPool,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    max_bytes: int,
    progress: _Progress,
    progressed: Callable[[], None],
) -> Answer | StreamEnd:
    """POST a streaming request: how its event stream ended, or the whole answer when it is
    not an event stream (an error status, or a server that does not stream). ``progressed``
    is called whenever an event carried part of the message."""
    async with (
        _client_for(http) as client,
        client.stream("POST", url, content=content, headers=headers) as response,
    ):
        content_type = response.headers.get("content-type", "").strip().lower()
        if response.status_code != 200 or not content_type.startswith(_EVENT_STREAM):
            return await read_capped(response, max_bytes)
        progress.headers, progress.streaming = response.headers, True
        assembler = MessageAssembler(max_bytes=max_bytes)
        async for piece in _pieces(response):
            progress.keep(piece)
            end = assembler.feed(piece)
            if assembler.events != progress.events:
                progress.events = assembler.events
                progressed()
            if end is not None:
                return end
        return assembler.finish()


async def _pieces(response: httpx.Response) -> AsyncIterator[bytes]:
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


async def _post(
    http: httpx.AsyncClient | ClientPool,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    max_bytes: int,
) -> Answer:
    async with (
        _client_for(http) as client,
        client.stream("POST", url, content=content, headers=headers) as response,
    ):
        return await read_capped(response, max_bytes)


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
