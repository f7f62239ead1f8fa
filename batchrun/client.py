"""The transport: the only module that imports httpx.

A :class:`MessagesClient` POSTs one Messages body and returns an Outcome value; every httpx
error becomes a Retryable here, once, so nothing above this module handles exceptions from
the network.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import httpx
import orjson

from batchrun.config import DEFAULT_CONNECT_TIMEOUT_S
from batchrun.endpoints import Endpoint
from batchrun.policy import Outcome, Retryable, classify_response, error_body

log = logging.getLogger(__name__)

# The Messages parameters that /v1/messages/count_tokens accepts; it refuses the others
# (max_tokens, temperature, metadata...).
_COUNT_TOKENS_KEYS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
)


class MessagesClient:
    """Sends Messages requests to one endpoint."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        endpoint: Endpoint,
        headers: Mapping[str, str],
    ) -> None:
        self._http = http
        self._url = endpoint.messages_url
        self._count_tokens_url = endpoint.messages_url.rstrip("/") + "/count_tokens"
        self._headers = dict(headers)
        self._key_hint = endpoint.api_key_env or "the endpoint's credentials"
        self._extra_body = dict(endpoint.extra_body)

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
            return _transport_failure("timeout_error", "the request timed out", exc)
        except httpx.HTTPError as exc:
            return _transport_failure("api_error", "the connection failed", exc)
        return classify_response(response.status_code, response.headers, response.content)

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


def _transport_failure(error_type: str, what: str, exc: httpx.HTTPError) -> Retryable:
    # The exception text names the host at most, never headers, so the key cannot leak.
    detail = (
        f"{what} ({type(exc).__name__}: {exc})" if str(exc) else f"{what} ({type(exc).__name__})"
    )
    return Retryable(reason=detail, error=error_body(error_type, detail))


def create_http_client(
    *,
    timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An httpx client sized for ``max_connections`` concurrent requests."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(DEFAULT_CONNECT_TIMEOUT_S, timeout_s)),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        transport=transport,
    )


def in_process_transport(app: object) -> httpx.AsyncBaseTransport:
    """A transport that calls an ASGI app directly (the built-in simulator).

    App exceptions become 500 answers, as a real server would send, instead of escaping.
    """
    return httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
