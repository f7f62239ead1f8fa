"""The transport: the only module that imports httpx.

A :class:`MessagesClient` POSTs one Messages body and returns an Outcome value; every httpx
error becomes a Retryable here, once, so nothing above this module handles exceptions from
the network.

The API key stays here. Header values are checked before the first request, because httpx
and h11 quote an unsendable value (a pasted line break, a typographic quote) in their
exception text, which would otherwise be stored as every request's error. And the key is
cut out of error bodies and failure text before they go anywhere, because some gateways
echo the key they were given ("invalid API key sk-...").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

import httpx
import orjson

from batchrun.errors import ConfigError
from batchrun.records import Outcome, Retryable, error_body
from batchrun.transport.auth import (
    RequestHeaders,
    redact,
    redact_bytes,
    secret_header_names,
)
from batchrun.transport.classify import classify_response
from batchrun.transport.endpoints import DEFAULT_CONNECT_TIMEOUT_S, Endpoint

log = logging.getLogger(__name__)

# The Messages parameters that /v1/messages/count_tokens accepts; it refuses the others
# (max_tokens, temperature, metadata...).
_COUNT_TOKENS_KEYS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
)
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
    ) -> None:
        self._http = http
        self._url = endpoint.messages_url
        self._count_tokens_url = endpoint.messages_url.rstrip("/") + "/count_tokens"
        self._headers = dict(headers.headers)
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
            response = await self._http.post(
                self._url, content=self._body(params_json), headers=self._headers
            )
        except httpx.TimeoutException as exc:
            return self._transport_failure("timeout_error", "the request timed out", exc)
        except httpx.HTTPError as exc:
            return self._transport_failure("api_error", "the connection failed", exc)
        body = response.content
        if response.status_code != 200:
            body = self._redact_bytes(body)
        return classify_response(response.status_code, response.headers, body)

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
            response = await self._http.post(
                self._count_tokens_url, content=json.dumps(body).encode(), headers=self._headers
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

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST on the least busy client."""
        index = min(range(len(self._clients)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            return await self._clients[index].post(url, content=content, headers=headers)
        finally:
            self._in_flight[index] -= 1

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
