"""The Messages sender: a :class:`MessagesClient` POSTs one Messages body and returns an
Outcome value.

Every httpx error becomes a Retryable here, once, so nothing above this module handles
exceptions from the network. One attempt is bounded as a whole: ``timeout_s`` covers
connecting, sending and the entire body (a server dripping one byte at a time cannot hold it
longer), and the body is read in pieces up to ``max_response_bytes`` after decompression
(``transport.http`` reads it: an endless body or a gzip bomb is cut off, not held in memory).

Long generations are streamed (``transport.streaming`` says when): the request goes out with
``"stream": true`` and the server-sent events are assembled, as they arrive, into the Message
a non-streamed call would have returned, which is then classified like a 200 JSON body. For
such a request ``timeout_s`` bounds the wait for the next event that carries part of the
message (pings do not count), not the whole attempt: a healthy stream may last an hour, a
stream that stops progressing, or only pings, is cut after ``timeout_s``. An ``error``
event counts as the HTTP status of its error type; a stream that ends before
``message_stop``, or sends an event that does not fit, is worth another attempt.

The API key stays here. Header values are checked before the first request
(:func:`batchrun.transport.http.check_header_values`). And the key is cut out of every answer
(headers and body, success or error) and of failure text before they go anywhere, because
some gateways echo the key they were given ("invalid API key sk-...", or the key as a
request-id).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import orjson
from aiolimiter import AsyncLimiter

from batchrun.records import Fatal, Outcome, Retryable, error_body
from batchrun.transport.auth import RequestHeaders, redact, redact_bytes
from batchrun.transport.classify import (
    MAX_REQUEST_ID_CHARS,
    classify_response,
    status_for_error_type,
)
from batchrun.transport.endpoints import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    Endpoint,
)
from batchrun.transport.http import (
    USER_AGENT,
    Answer,
    ClientPool,
    check_header_values,
    client_for,
    post_stream,
    read_capped,
    stream_pieces,
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
# What an errored result keeps of an answer that was too large (or of a broken stream).
_KEPT_OF_TOO_LARGE = 64 * 1024
_EVENT_STREAM = "text/event-stream"


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
            async with self._count_tokens_pacer, client_for(self._http) as client:
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
    async with post_stream(http, url, content=content, headers=headers) as response:
        content_type = response.headers.get("content-type", "").strip().lower()
        if response.status_code != 200 or not content_type.startswith(_EVENT_STREAM):
            return await read_capped(response, max_bytes)
        progress.headers, progress.streaming = response.headers, True
        assembler = MessageAssembler(max_bytes=max_bytes)
        async for piece in stream_pieces(response):
            progress.keep(piece)
            end = assembler.feed(piece)
            if assembler.events != progress.events:
                progress.events = assembler.events
                progressed()
            if end is not None:
                return end
        return assembler.finish()


async def _post(
    http: httpx.AsyncClient | ClientPool,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    max_bytes: int,
) -> Answer:
    async with post_stream(http, url, content=content, headers=headers) as response:
        return await read_capped(response, max_bytes)
