"""The simulated Messages API as a raw ASGI 3 application.

Routes (any prefix works for the API routes, as gateways mount them elsewhere):

- ``POST …/messages``: a Message, an error, or a fault;
- ``POST …/messages/count_tokens``: ``{"input_tokens": N}``;
- ``…/messages/batches…`` and AIMLAPI's ``…/batches…``: the Message Batches API
  (``simulator.batch_api``, processed by ``simulator.batches``);
- ``GET /_simulator/stats``: :class:`SimulatorStats` as JSON; ``POST /_simulator/reset``
  clears stats, buckets, directive counts and random streams;
- anything else: 404 ``not_found_error`` (405 for a wrong method on an API route).

A message request goes through: authentication (401) → body checks (400, ``cache_control``
markers included) → directives → error faults (directive ``status``, random 500/529) → prompt
cache lookup (``simulator.caching``) → rate limits (429; cache reads do not count) → latency
→ output settlement and cache writes → delivery faults (hang, cut, malformed, not_message) →
the Message. Error faults cost no rate limit; delivery faults come after admission, as if
the server did the work and the answer got lost.

With ``"stream": true`` the Message goes out as server-sent events (``simulator.streaming``):
the headers and ``message_start`` at once, then the latency spread over the events, with
pings while nothing else is sent. ``cut`` and ``stream_cut`` drop the connection after half
the events, ``malformed`` sends an event that is not JSON. The events make up exactly the
Message the same request would have been answered unstreamed (same seed, same order).

With ``idle_timeout_s``, an answer that would leave the connection silent longer than that
is dropped after it, as proxies do: a non-streamed answer slower than that never comes (the
connection closes without a byte; in-process, httpx makes that a 500 with no body).

The ``cut`` fault sends the headers (with the full ``content-length``) and half the body, then
raises :class:`SimulatedConnectionCut`. Under uvicorn the connection is closed, so the client
sees a truncated response (httpx raises ``RemoteProtocolError``). In-process, batchrun's
transport (``ASGITransport(raise_app_exceptions=False)``) hands the client the 200 with half a
body, which it treats as malformed; a plain ``ASGITransport`` re-raises the exception.

Time is the running event loop's clock only; wall time serves only the ``*-reset`` headers,
through an anchor taken when the app first sees a loop, and the timestamps of batches
(:attr:`SimulatorConfig.wall_clock`). Batches and the prompt cache keep loop times: they
belong to the loop they were made on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from batchrun.simulator.asgi import (
    CLOSE_CONNECTION,
    Headers,
    Receive,
    Scope,
    Send,
    SimulatedConnectionCut,
    SimulatedIdleCut,
    lifespan,
    logged_headers,
    presented_key,
    read_body,
    send_response,
    wait_for_disconnect,
)
from batchrun.simulator.batch_api import BatchApi, match_batch_route
from batchrun.simulator.batches import Batches
from batchrun.simulator.buckets import ModelBuckets, RateLimiter, Rejection
from batchrun.simulator.caching import CachePlan, PromptCache
from batchrun.simulator.config import SimulatorConfig
from batchrun.simulator.directives import (
    MARKER,
    NO_DIRECTIVE,
    Directive,
    DirectiveError,
    parse_directives,
)
from batchrun.simulator.faults import CUT, HANG, MALFORMED, NOT_MESSAGE, STREAM_CUT, Chaos, Fault
from batchrun.simulator.responses import (
    JSON_CONTENT_TYPE,
    MALFORMED_BODY,
    MALFORMED_EVENT,
    NOT_MESSAGE_BODY,
    SPEND_LIMIT_ERROR_CODE,
    SPEND_LIMIT_MESSAGE,
    IdMaker,
    build_message,
    default_error_message,
    error_body,
    reply_tokens,
)
from batchrun.simulator.stats import RequestLogEntry, SimulatorStats, request_fingerprint
from batchrun.simulator.streaming import (
    SSE_CONTENT_TYPE,
    EventSender,
    delta_chars,
    message_events,
)
from batchrun.simulator.tokens import count_input_tokens
from batchrun.simulator.validation import checked_breakpoints, count_params_error, parse_object


@dataclass(slots=True)
class _Exchange:
    """One API request being answered."""

    send: Send
    path: str
    is_message: bool
    request_id: str
    received_at: float
    digest: bytes
    headers: dict[bytes, bytes]
    model: str | None = None
    buckets: ModelBuckets | None = None
    should_retry: bool | None = None
    streamed: bool = False
    plan: CachePlan | None = None
    fingerprint: str = ""


class SimulatorApp:
    """The ASGI callable; ``config`` and ``stats`` are public. Build it with :func:`create_app`."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats(log_size=config.log_size)
        self._limiter = RateLimiter(config)
        self._limited = bool(config.limits)
        self._chaos = Chaos(config)
        self._ids = IdMaker(config.seed)
        self._cache = PromptCache(
            min_tokens=config.cache_min_tokens,
            history_s=config.batch_start_s + config.batch_processing_s,
            ttl_scale=config.cache_ttl_scale,
        )
        self._batches = Batches(config, self.stats, self._cache, self._ids)
        self._batch_api = BatchApi(self._batches, authorized=self._authorized, clock=self._clock)
        key = config.required_api_key
        self._api_key = None if key is None else key.encode()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_anchor = 0.0
        self._wall_anchor = 0.0

    def reset(self) -> None:
        """Back to the initial state: stats, buckets, directive counts, random streams, the
        prompt cache and every batch."""
        self.stats.clear()
        self._limiter.reset()
        self._chaos.reset()
        self._ids.reset()
        self._cache.clear()
        self._batches.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        route = match_batch_route(path) if "/batches" in path else None
        if route is not None:
            await self._batch_api.handle(scope, receive, send, route)
            return
        is_message = path.endswith("/messages")
        if is_message or path.endswith("/messages/count_tokens"):
            if method != "POST":
                await self._no_route(send, 405, f"{method} is not allowed on {path}")
                return
            body = await read_body(receive)
            if body is None:
                return
            if is_message:
                await self._messages(scope, body, receive, send)
            else:
                await self._count_tokens(scope, body, send)
        elif path == "/_simulator/stats" and method == "GET":
            self._batches.advance(self._clock())
            stats = self.stats.to_json().encode()
            await send_response(send, 200, _json_headers(stats), stats)
        elif path == "/_simulator/reset" and method == "POST":
            self.reset()
            await send_response(send, 200, _json_headers(b'{"ok":true}'), b'{"ok":true}')
        else:
            await self._no_route(send, 404, f"Not found: {method} {path}")

    async def _messages(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        ex = self._exchange(scope, send, body, is_message=True)
        reception = self.stats.record_reception(ex.digest)
        if not self._authorized(ex.headers):
            await self._error(ex, 401, default_error_message(401))
            return
        params = parse_object(body)
        if isinstance(params, str):
            await self._error(ex, 400, params)
            return
        model = params.get("model")
        if isinstance(model, str) and model:
            ex.model = model
            self.stats.per_model[model] = self.stats.per_model.get(model, 0) + 1
            if self._limited:
                ex.buckets = self._limiter.buckets_for(model, ex.received_at)
        points = checked_breakpoints(params)
        if isinstance(points, str):
            await self._error(ex, 400, points)
            return
        directive = NO_DIRECTIVE
        if MARKER in body:
            try:
                directive = parse_directives(params)
            except DirectiveError as exc:
                await self._error(ex, 400, str(exc))
                return
            ex.should_retry = directive.should_retry

        ex.streamed = params.get("stream") is True
        if ex.streamed:
            self.stats.streamed += 1
        input_tokens = count_input_tokens(params)
        max_tokens: int = params["max_tokens"]
        output_tokens, capped = reply_tokens(
            max_tokens, directive.output_tokens, self.config.output_tokens
        )
        fault = self._chaos.pick(directive, reception)
        if fault == STREAM_CUT and not ex.streamed:
            fault = None
        if isinstance(fault, int):
            delay_s = self._chaos.latency_s(directive, 0)
            await self._silence(scope, ex, delay_s)
            await self._status_fault(ex, fault, directive)
            return
        self._batches.advance(ex.received_at)
        plan = self._cache.plan(points, input_tokens, ex.received_at)
        # Admitted once the answer is ready (llmock's way), the latency comes first.
        late_s: float | None = None
        if self.config.admit_after_latency and not ex.streamed:
            first_token_s, tokens_s = self._chaos.latency_parts_s(directive, output_tokens)
            late_s = first_token_s + tokens_s
            await self._silence(scope, ex, late_s)
        if ex.buckets is not None:
            rejection = self._limiter.admit(
                ex.buckets,
                ex.received_at if late_s is None else self._clock(),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                max_tokens=max_tokens,
                cache_read_input_tokens=plan.read_tokens,
            )
            if rejection is not None:
                await self._rate_limited(ex, rejection)
                return
        self._cache.touch(plan, ex.received_at)
        ex.plan = plan
        ex.fingerprint = request_fingerprint(params)
        usage = plan.usage(output_tokens, "standard")
        if late_s is None:
            first_token_s, tokens_s = self._chaos.latency_parts_s(directive, output_tokens)
        if ex.streamed and fault not in (HANG, NOT_MESSAGE):
            answer = self._message(ex, params, directive, usage, capped)
            try:
                await self._stream(ex, receive, answer, fault, first_token_s, tokens_s)
            finally:
                self._settle(ex, output_tokens, max_tokens)
            return
        try:
            await self._silence(scope, ex, first_token_s + tokens_s if late_s is None else 0.0)
        finally:
            self._settle(ex, output_tokens, max_tokens)

        if fault == HANG:
            self._record(ex, HANG)
            await wait_for_disconnect(receive)
        elif fault == MALFORMED:
            await self._answer(ex, 200, MALFORMED_BODY)
        elif fault == NOT_MESSAGE:
            await self._answer(ex, 200, NOT_MESSAGE_BODY)
        else:
            answer = self._message(ex, params, directive, usage, capped)
            if fault == CUT:
                await self._cut(ex, answer)
            self.stats.record_success(ex.received_at, usage, fingerprint=ex.fingerprint)
            await self._answer(ex, 200, answer, message=answer)

    def _message(
        self,
        ex: _Exchange,
        params: dict[str, object],
        directive: Directive,
        usage: dict[str, Any],
        capped: bool,
    ) -> bytes:
        """The Message answering ``params`` (the same whether it is streamed or not)."""
        answer = build_message(
            params,
            ids=self._ids,
            usage=usage,
            capped=capped,
            invalid_output=directive.invalid_output,
        )
        if directive.echo_key:
            # Some gateways hand the key back: as the request-id, and in the reply.
            key = (presented_key(ex.headers)[0] or b"none").decode("latin-1")
            ex.request_id = key
            echoed = json.loads(answer)
            echoed["content"] = [{"type": "text", "text": f"your key is {key}"}]
            answer = json.dumps(echoed).encode()
        return answer

    def _settle(self, ex: _Exchange, output_tokens: int, max_tokens: int) -> None:
        """The work is done: charge the output, make the cache writes readable."""
        now = self._clock()
        if ex.buckets is not None:
            self._limiter.settle_output(
                ex.buckets, now, output_tokens=output_tokens, max_tokens=max_tokens
            )
        if ex.plan is not None and ex.plan.writes:
            self._batches.advance(now)
            self._cache.write(ex.plan, now)

    async def _silence(self, scope: Scope, ex: _Exchange, delay_s: float) -> None:
        """Wait ``delay_s`` before answering; with ``idle_timeout_s`` shorter than that,
        drop the connection after ``idle_timeout_s`` instead, without an answer."""
        idle_timeout_s = self.config.idle_timeout_s
        if idle_timeout_s is None or delay_s <= idle_timeout_s:
            await _sleep(delay_s)
            return
        await asyncio.sleep(idle_timeout_s)
        self._record(ex, "idle_cut")
        close = scope.get(CLOSE_CONNECTION)
        if close is not None:
            close()
        raise SimulatedIdleCut(f"simulated idle timeout: no byte within {idle_timeout_s:g} s")

    async def _stream(
        self,
        ex: _Exchange,
        receive: Receive,
        answer: bytes,
        fault: Fault,
        first_token_s: float,
        tokens_s: float,
    ) -> None:
        """Send ``answer`` as server-sent events: ``message_start`` at once, the first token
        after ``first_token_s``, the output spread over ``tokens_s``."""
        message = json.loads(answer)
        usage = message["usage"]
        per_token_s = tokens_s / max(usage["output_tokens"], 1)
        events = message_events(message, piece_chars=delta_chars(per_token_s))
        output_chars = sum(event.output_chars for event in events)
        waits_s = [tokens_s * event.output_chars / max(output_chars, 1) for event in events]
        if not output_chars:
            waits_s[-2] = tokens_s  # no text to spread it over: before message_delta
        waits_s[1] += first_token_s
        cut_at = len(events) // 2 if fault in (CUT, STREAM_CUT) else None
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        sender = EventSender(
            ex.send,
            ping_interval_s=self.config.stream_ping_interval_s,
            idle_timeout_s=self.config.idle_timeout_s,
            client_gone=gone.done,
        )
        try:
            await sender.start(self._headers(ex, None))
            await sender.event(events[0])
            await sender.ping()
            for index in range(1, len(events)):
                try:
                    await sender.wait(waits_s[index])
                except SimulatedIdleCut:
                    self._record(ex, "idle_cut")
                    raise
                if sender.client_gone:
                    self._record(ex, "abandoned")
                    return
                if index == cut_at:
                    self._record(ex, CUT)
                    raise SimulatedConnectionCut("simulated cut: the stream stopped midway")
                if index == 1 and fault == MALFORMED:
                    await sender.raw(MALFORMED_EVENT)
                if index == len(events) - 1:
                    if fault == MALFORMED:
                        self._record(ex, "200")
                    else:
                        self._record(ex, "200", message=answer)
                        self.stats.record_success(ex.received_at, usage, fingerprint=ex.fingerprint)
                await sender.event(events[index])
            await sender.end()
        finally:
            gone.cancel()

    async def _count_tokens(self, scope: Scope, body: bytes, send: Send) -> None:
        ex = self._exchange(scope, send, body, is_message=False)
        self.stats.count_tokens_received += 1
        if not self._authorized(ex.headers):
            await self._error(ex, 401, default_error_message(401))
            return
        params = parse_object(body)
        if isinstance(params, str):
            await self._error(ex, 400, params)
            return
        if isinstance(params.get("model"), str):
            ex.model = params["model"]
        problem = count_params_error(params)
        if problem is not None:
            await self._error(ex, 400, problem)
            return
        payload = json.dumps({"input_tokens": count_input_tokens(params)}).encode()
        await self._answer(ex, 200, payload)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if self._api_key is None:
            return True
        key, _ = presented_key(headers)
        return key is not None and hmac.compare_digest(key, self._api_key)

    # -- answering -------------------------------------------------------------------------

    async def _status_fault(self, ex: _Exchange, status: int, directive: Directive) -> None:
        extra: Headers = []
        details = None
        message = default_error_message(status)
        if status == 429:
            if directive.spend_limit:
                details = {"error_code": SPEND_LIMIT_ERROR_CODE}
                message = SPEND_LIMIT_MESSAGE
            elif directive.retry_after_s is not None:
                extra.append((b"retry-after", _seconds_header(directive.retry_after_s)))
            elif self.config.send_retry_after:
                extra.append((b"retry-after", b"1"))
        if directive.echo_key:
            key, _ = presented_key(ex.headers)
            message += f" (API key presented: {(key or b'none').decode('latin-1')})"
        body = error_body(status, message, ex.request_id, details=details)
        await self._answer(ex, status, body, extra)

    async def _rate_limited(self, ex: _Exchange, rejection: Rejection) -> None:
        extra: Headers = []
        if self.config.send_retry_after:
            extra.append((b"retry-after", str(rejection.retry_after_s).encode()))
        await self._answer(ex, 429, error_body(429, rejection.message, ex.request_id), extra)

    async def _error(self, ex: _Exchange, status: int, message: str) -> None:
        await self._answer(ex, status, error_body(status, message, ex.request_id))

    async def _cut(self, ex: _Exchange, answer: bytes) -> NoReturn:
        self._record(ex, CUT)
        start = {"type": "http.response.start", "status": 200}
        await ex.send({**start, "headers": self._headers(ex, answer)})
        half = answer[: len(answer) // 2]
        await ex.send({"type": "http.response.body", "body": half, "more_body": True})
        raise SimulatedConnectionCut("simulated cut: connection closed in mid-response")

    async def _answer(
        self,
        ex: _Exchange,
        status: int,
        body: bytes,
        extra: Headers | None = None,
        *,
        message: bytes | None = None,
    ) -> None:
        self._record(ex, str(status), message=message)
        headers = self._headers(ex, body)
        if extra:
            headers.extend(extra)
        if status >= 400 and ex.should_retry is not None:
            headers.append((b"x-should-retry", b"true" if ex.should_retry else b"false"))
        await send_response(ex.send, status, headers, body)

    def _headers(self, ex: _Exchange, body: bytes | None) -> Headers:
        """The answer's headers; ``body`` None for an event stream (no length known)."""
        headers = [SSE_CONTENT_TYPE, (b"cache-control", b"no-cache")]
        if body is not None:
            headers = _json_headers(body)
        headers.append((b"request-id", ex.request_id.encode()))
        if ex.buckets is not None and self.config.send_ratelimit_headers:
            now = self._clock()
            wall_now = self._wall_anchor + (now - self._loop_anchor)
            headers.extend(self._limiter.headers(ex.buckets, now, wall_now))
        return headers

    async def _no_route(self, send: Send, status: int, message: str) -> None:
        request_id = self._ids.make("req")
        body = error_body(status, message, request_id)
        headers = _json_headers(body)
        headers.append((b"request-id", request_id.encode()))
        await send_response(send, status, headers, body)

    # -- bookkeeping -----------------------------------------------------------------------

    def _clock(self) -> float:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if loop is not self._loop:
            # A new loop has its own clock: re-anchor wall time, restart bucket clocks.
            self._loop = loop
            self._loop_anchor = now
            self._wall_anchor = time.time()
            self._limiter.rebase(now)
        return now

    def _exchange(self, scope: Scope, send: Send, body: bytes, *, is_message: bool) -> _Exchange:
        return _Exchange(
            send=send,
            path=scope["path"],
            is_message=is_message,
            request_id=self._ids.make("req"),
            received_at=self._clock(),
            digest=hashlib.sha256(body).digest(),
            headers=dict(scope["headers"]),
        )

    def _record(self, ex: _Exchange, status: str, *, message: bytes | None = None) -> None:
        stats = self.stats
        if ex.is_message:
            stats.by_status[status] = stats.by_status.get(status, 0) + 1
        if stats.log_size:
            kept = message.decode() if message is not None and self.config.log_messages else None
            stats.log.append(
                RequestLogEntry(
                    path=ex.path,
                    model=ex.model,
                    status=status,
                    loop_time=ex.received_at,
                    request_id=ex.request_id,
                    body_sha256=ex.digest.hex(),
                    headers=logged_headers(ex.headers),
                    streamed=ex.streamed,
                    message=kept,
                )
            )


def create_app(config: SimulatorConfig | None = None) -> SimulatorApp:
    """A simulator app for ``config`` (default: unlimited, instant, faultless)."""
    return SimulatorApp(config or SimulatorConfig())


def _json_headers(body: bytes) -> Headers:
    return [JSON_CONTENT_TYPE, (b"content-length", str(len(body)).encode())]


def _seconds_header(seconds: float) -> bytes:
    return str(int(seconds) if seconds == int(seconds) else seconds).encode()


async def _sleep(delay_s: float) -> None:
    # Zero latency must not yield to the loop: the hot path stays synchronous.
    if delay_s > 0.0:
        await asyncio.sleep(delay_s)
