"""An httpx transport that sends on aiohttp: httpx stays the interface, aiohttp moves the bytes.

Why: httpcore (httpx's own transport) spends most of a fast run in Python, in its pool's
bookkeeping (it looks at every connection, and polls idle ones for readability, for every
request it assigns) and in h11's pure-Python parser. aiohttp parses HTTP in C and keeps its
pool in a dict of queues. Side by side on one zero-latency server, 4,000 POSTs, 64 at a
time (bench/throughput.py's bare loops, 2026-12-07): httpx with one client of 64
connections 2.29 ms of CPU per request, eight clients of 8 (what batchrun used) 0.9 ms, this
transport 0.31 ms. At a limit of 30,000 a minute that is the difference between a worker
that needs a core for the HTTP alone and one that does not.

What it keeps of httpx's behaviour, so nothing above the transport changes:

- **Bodies arrive raw.** aiohttp's own decompression is off: httpx decodes, and
  :func:`batchrun.transport.http.read_capped` inflates a compressed body itself within its cap
  (a gzip bomb stays a few bytes over the cap).
- **No redirects, no cookies, no proxies from the environment.** A redirect is an answer like
  any other (the caller decides; a key never follows it to another host); cookies are
  httpx's business; httpx still routes a proxied host through its own transports.
- **httpx's exceptions.** Every failure aiohttp raises becomes the httpx exception a caller
  already handles (:func:`_as_httpx`), with the same names where the failure is the same
  (a server closing the connection before its answer is ``RemoteProtocolError: Server
  disconnected without sending a response.`` either way). Nothing a server sends escapes as
  an aiohttp exception.
- **Bounded headers.** A header line may be up to :data:`MAX_HEADER_LINE_BYTES` and an
  answer carry up to :data:`MAX_HEADERS` of them; more ends that request with a protocol
  error, as h11's limit did.
- **Connections.** At most ``max_connections`` at once, kept alive for
  ``keepalive_s``; a body read to its end returns its connection to the pool, a body left
  unread (cut at its cap) closes it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    # Imported when the first session is made: a command that sends nothing (submit,
    # status) does not pay aiohttp's import (about 0.1 s).
    import aiohttp

# An answer's header lines and count: generous for any real API, bounded for a hostile one.
MAX_HEADER_LINE_BYTES = 64 * 1024
MAX_HEADERS = 256
# Headers aiohttp would add that httpx's request already has, or that batchrun never sends.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
# The most one piece of a body read holds (the caller's caps count the pieces).
_PIECE_BYTES = 64 * 1024
# What httpcore said when a server closed the connection before its answer; kept word for
# word, since error messages carry it.
_DISCONNECTED = "Server disconnected without sending a response."


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests on one aiohttp session, made on first use (it belongs to the event
    loop running then) and closed with the transport."""

    def __init__(
        self,
        *,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
        keepalive_s: float = 5.0,
    ) -> None:
        self._max_connections = max_connections
        self._tls = tls
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_s,
                ssl=self._tls if self._tls is not None else True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                max_line_size=MAX_HEADER_LINE_BYTES,
                max_field_size=MAX_HEADER_LINE_BYTES,
                max_headers=MAX_HEADERS,
                # Every timeout is the request's own (below) or the caller's.
                timeout=aiohttp.ClientTimeout(total=None),
                # Set once here rather than per request, where aiohttp builds the set anew.
                skip_auto_headers=_SKIP_AUTO_HEADERS,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        try:
            data: bytes | None = request.content or None
        except httpx.RequestNotRead:
            data = await request.aread() or None
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            # aiohttp frames the body itself.
            if name.lower() != b"transfer-encoding"
        ]
        with _as_httpx(request):
            response = await self._get_session().request(
                request.method,
                str(request.url),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout(timeouts),
            )
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response, request),
            request=request,
            extensions=extensions,
        )

    def _timeout(self, timeouts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        """aiohttp's timeouts for httpx's ``timeout`` extension (the same few every time: one
        object each)."""
        import aiohttp

        key = (timeouts.get("pool"), timeouts.get("connect"), timeouts.get("read"))
        made = self._timeouts.get(key)
        if made is None:
            pool, connect, read = key
            made = aiohttp.ClientTimeout(
                total=None, connect=pool, sock_connect=connect, sock_read=read
            )
            self._timeouts[key] = made
        return made

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class _ResponseStream(httpx.AsyncByteStream):
    """An aiohttp body as httpx reads it: pieces as they arrive."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx(self._request):
            async for piece in self._response.content.iter_chunked(_PIECE_BYTES):
                yield piece

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            # Cut short (a cap, a stopped stream): the rest of the body would poison the
            # connection's next answer.
            self._response.close()


@contextmanager
def _as_httpx(request: httpx.Request) -> Iterator[None]:
    """Raise what aiohttp raises as the httpx exception a caller of httpx expects."""
    import aiohttp
    from aiohttp import http_exceptions

    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(_text(exc, "timed out connecting"), request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(_text(exc, "could not connect"), request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(_DISCONNECTED, request=request) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        # A read that waited longer than the read timeout (the attempt's own deadline is
        # the caller's asyncio.timeout, which this never catches: it cancels the task).
        raise httpx.ReadTimeout(_text(exc, "timed out reading"), request=request) from exc
    except (
        aiohttp.ClientPayloadError,
        aiohttp.ClientResponseError,
        http_exceptions.HttpProcessingError,
    ) as exc:
        raise httpx.RemoteProtocolError(_text(exc, "malformed answer"), request=request) from exc
    except (aiohttp.ClientOSError, ConnectionError) as exc:
        raise httpx.ReadError(_text(exc, "the connection failed"), request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(_text(exc, type(exc).__name__), request=request) from exc


def _text(exc: BaseException, fallback: str) -> str:
    return str(exc) or fallback
