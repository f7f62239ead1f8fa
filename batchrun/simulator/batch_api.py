"""The Message Batches API over HTTP, in two flavours, under any path prefix.

Anthropic's (``{prefix}`` is usually ``/v1``)::

    POST   {prefix}/messages/batches               create → 200 MessageBatch
    GET    {prefix}/messages/batches               list (limit, before_id, after_id)
    GET    {prefix}/messages/batches/{id}          retrieve → MessageBatch
    POST   {prefix}/messages/batches/{id}/cancel   cancel → MessageBatch
    GET    {prefix}/messages/batches/{id}/results  results → JSONL (400 until ended)
    DELETE {prefix}/messages/batches/{id}          delete (400 until ended) → then 404

AIMLAPI's, whose answers its documentation does not show, so these are the simulator's
guess::

    POST   {prefix}/batches                  create → 201 MessageBatch
    GET    {prefix}/batches?batch_id={id}    MessageBatch while not ended; then the JSONL
    POST   {prefix}/batches/cancel/{id}      cancel → 200 MessageBatch

Both flavours share one set of batches. Authentication is the Messages route's (401); a
create body over ``batch_max_bytes`` is a 413 ``request_too_large`` before anything else (a
proxy answers it); envelope errors are 400s naming the field (``requests.3.custom_id:
...``); params are checked only when the batch is processed (see ``simulator.batches``).
An unknown or deleted id is a 404 ``not_found_error``; a wrong method a 405. ``results_url``
is the absolute URL of the results, built from the request's scheme, ``host`` and prefix.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from batchrun.simulator.asgi import (
    Headers,
    Oversized,
    Receive,
    Scope,
    Send,
    logged_headers,
    read_body_within,
    send_response,
)
from batchrun.simulator.batches import Batch, Batches
from batchrun.simulator.responses import (
    JSON_CONTENT_TYPE,
    default_error_message,
    error_body,
)
from batchrun.simulator.stats import RequestLogEntry
from batchrun.simulator.validation import parse_object

ANTHROPIC = "anthropic"
AIMLAPI = "aimlapi"
JSONL_CONTENT_TYPE = (b"content-type", b"application/x-jsonl")
CUSTOM_ID_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"
_CUSTOM_ID_RE = re.compile(CUSTOM_ID_PATTERN)
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 1000
_ANTHROPIC_ROUTE = re.compile(
    r"(?P<prefix>.*)/messages/batches(?:/(?P<id>[^/]+)(?:/(?P<action>cancel|results))?)?"
)
_AIMLAPI_ROUTE = re.compile(r"(?P<prefix>.*)/batches(?:/(?P<action>cancel)/(?P<id>[^/]+))?")


@dataclass(frozen=True, slots=True)
class BatchRoute:
    """A batch path taken apart: its flavour, prefix, batch id and action."""

    flavour: str
    prefix: str
    batch_id: str | None
    action: str | None

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this path answers."""
        if self.action is not None:
            return ("GET",) if self.action == "results" else ("POST",)
        if self.batch_id is not None:
            return ("GET", "DELETE")
        return ("POST", "GET")


def match_batch_route(path: str) -> BatchRoute | None:
    """The batch route ``path`` names, if any (Anthropic's paths win)."""
    match = _ANTHROPIC_ROUTE.fullmatch(path)
    if match is not None:
        return BatchRoute(ANTHROPIC, match["prefix"], match["id"], match["action"])
    match = _AIMLAPI_ROUTE.fullmatch(path)
    if match is not None:
        return BatchRoute(AIMLAPI, match["prefix"], match["id"], match["action"])
    return None


def parse_requests(
    payload: dict[str, Any], max_requests: int
) -> list[tuple[str, dict[str, Any]]] | str:
    """The ``(custom_id, params)`` pairs of a create body, or what is wrong with it."""
    if "requests" not in payload:
        return "requests: Field required"
    requests = payload["requests"]
    if not isinstance(requests, list):
        return "requests: Input should be a valid list"
    if not requests:
        return "requests: List should have at least 1 item after validation, not 0"
    if len(requests) > max_requests:
        return (
            f"requests: List should have at most {max_requests} items after validation, "
            f"not {len(requests)}"
        )
    pairs: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for index, request in enumerate(requests):
        where = f"requests.{index}"
        if not isinstance(request, dict):
            return f"{where}: Input should be a valid dictionary"
        problem = _custom_id_error(request)
        if problem is not None:
            return f"{where}.custom_id: {problem}"
        custom_id: str = request["custom_id"]
        if custom_id in seen:
            return (
                f"{where}.custom_id: duplicate custom_id {custom_id!r}; custom_id must be "
                f"unique within a batch"
            )
        seen.add(custom_id)
        if "params" not in request:
            return f"{where}.params: Field required"
        if not isinstance(request["params"], dict):
            return f"{where}.params: Input should be a valid dictionary"
        pairs.append((custom_id, request["params"]))
    return pairs


def _custom_id_error(request: dict[str, Any]) -> str | None:
    if "custom_id" not in request:
        return "Field required"
    custom_id = request["custom_id"]
    if not isinstance(custom_id, str):
        return "Input should be a valid string"
    if not custom_id:
        return "String should have at least 1 character"
    if len(custom_id) > 64:
        return "String should have at most 64 characters"
    if _CUSTOM_ID_RE.fullmatch(custom_id) is None:
        return f"String should match pattern '{CUSTOM_ID_PATTERN}'"
    return None


@dataclass(slots=True)
class _Call:
    """One batch API request being answered."""

    scope: Scope
    send: Send
    route: BatchRoute
    request_id: str
    received_at: float
    headers: dict[bytes, bytes]
    body: bytes = b""


class BatchApi:
    """Answers the batch routes for one simulator app."""

    def __init__(
        self,
        batches: Batches,
        *,
        authorized: Callable[[dict[bytes, bytes]], bool],
        clock: Callable[[], float],
    ) -> None:
        self._batches = batches
        self._config = batches.config
        self._stats = batches.stats
        self._ids = batches.ids
        self._authorized = authorized
        self._clock = clock

    async def handle(self, scope: Scope, receive: Receive, send: Send, route: BatchRoute) -> None:
        """Answer one request on ``route``."""
        now = self._clock()
        call = _Call(scope, send, route, self._ids.make("req"), now, dict(scope["headers"]))
        method: str = scope["method"]
        if method not in route.methods:
            await self._error(call, 405, f"{method} is not allowed on {scope['path']}")
            return
        if method == "POST" and route.action is None:
            body = await read_body_within(receive, self._config.batch_max_bytes)
            if body is None:
                return
            if isinstance(body, Oversized):
                await self._error(call, 413, default_error_message(413))
                return
            call.body = body
        if not self._authorized(call.headers):
            await self._error(call, 401, default_error_message(401))
            return
        self._batches.advance(now)
        if route.batch_id is None and method == "POST":
            await self._create(call)
        elif route.batch_id is None and route.flavour == ANTHROPIC:
            await self._list(call)
        else:
            await self._on_batch(call, method)

    async def _create(self, call: _Call) -> None:
        payload = parse_object(call.body)
        if isinstance(payload, str):
            await self._error(call, 400, payload)
            return
        requests = parse_requests(payload, self._config.batch_max_requests)
        if isinstance(requests, str):
            await self._error(call, 400, requests)
            return
        batch = self._batches.create(requests, call.received_at)
        status = 201 if call.route.flavour == AIMLAPI else 200
        await self._json(call, status, self._object(call, batch))

    async def _list(self, call: _Call) -> None:
        query = _query(call.scope)
        limit = _limit(query.get("limit"))
        if isinstance(limit, str):
            await self._error(call, 400, limit)
            return
        before_id, after_id = query.get("before_id"), query.get("after_id")
        if before_id is not None and after_id is not None:
            await self._error(call, 400, "before_id and after_id cannot be used together")
            return
        page = self._batches.page(limit=limit, before_id=before_id, after_id=after_id)
        if isinstance(page, str):
            # Not documented; an unknown cursor is taken as a bad request.
            await self._error(call, 400, page)
            return
        batches, has_more = page
        data = [self._object(call, batch) for batch in batches]
        answer = {
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        await self._json(call, 200, answer)

    async def _on_batch(self, call: _Call, method: str) -> None:
        route = call.route
        batch_id = route.batch_id
        if batch_id is None:  # AIMLAPI's status-or-results takes the id as a parameter
            batch_id = _query(call.scope).get("batch_id")
            if batch_id is None:
                await self._error(call, 400, "batch_id: Field required")
                return
        batch = self._batches.find(batch_id)
        if batch is None:
            await self._error(call, 404, f"Message Batch {batch_id!r} not found")
            return
        if route.action == "cancel":
            self._stats.batch_cancels += 1
            self._batches.cancel(batch, call.received_at)
            await self._json(call, 200, self._object(call, batch))
        elif route.action == "results":
            await self._results(call, batch)
        elif method == "DELETE":
            if not batch.ended:
                message = f"Message Batch {batch.id} cannot be deleted before processing ends"
                await self._error(call, 400, message + "; cancel it first.")
                return
            self._batches.delete(batch)
            await self._json(call, 200, {"id": batch.id, "type": "message_batch_deleted"})
        else:
            self._stats.record_retrieve(batch.id)
            if route.flavour == AIMLAPI and batch.ended:
                await self._results(call, batch)
            else:
                await self._json(call, 200, self._object(call, batch))

    async def _results(self, call: _Call, batch: Batch) -> None:
        if not batch.ended:
            message = f"Message Batch {batch.id} has not ended processing; it has no results yet"
            await self._error(call, 400, message)
            return
        headers = [JSONL_CONTENT_TYPE, (b"content-length", str(len(batch.results)).encode())]
        await self._send(call, 200, headers, batch.results)

    def _object(self, call: _Call, batch: Batch) -> dict[str, Any]:
        scheme = call.scope.get("scheme", "http")
        host = call.headers.get(b"host", b"").decode("latin-1")
        if not host:
            server = call.scope.get("server") or ("localhost", None)
            host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
        base = f"{scheme}://{host}{call.route.prefix}"
        if call.route.flavour == AIMLAPI:
            url = f"{base}/batches?batch_id={batch.id}"
        else:
            url = f"{base}/messages/batches/{batch.id}/results"
        return batch.to_object(url)

    async def _json(self, call: _Call, status: int, answer: dict[str, Any]) -> None:
        body = json.dumps(answer, ensure_ascii=False).encode()
        headers = [JSON_CONTENT_TYPE, (b"content-length", str(len(body)).encode())]
        await self._send(call, status, headers, body)

    async def _error(self, call: _Call, status: int, message: str) -> None:
        await self._json(call, status, json.loads(error_body(status, message, call.request_id)))

    async def _send(self, call: _Call, status: int, headers: Headers, body: bytes) -> None:
        headers.append((b"request-id", call.request_id.encode()))
        stats = self._stats
        if stats.log_size:
            stats.log.append(
                RequestLogEntry(
                    path=call.scope["path"],
                    model=None,
                    status=str(status),
                    loop_time=call.received_at,
                    request_id=call.request_id,
                    body_sha256=hashlib.sha256(call.body).hexdigest(),
                    headers=logged_headers(call.headers),
                )
            )
        await send_response(call.send, status, headers, body)


def _query(scope: Scope) -> dict[str, str]:
    raw: bytes = scope.get("query_string", b"")
    return {key: values[-1] for key, values in parse_qs(raw.decode("latin-1")).items()}


def _limit(value: str | None) -> int | str:
    if value is None:
        return DEFAULT_LIST_LIMIT
    try:
        limit = int(value)
    except ValueError:
        return "limit: Input should be a valid integer"
    if limit < 1:
        return "limit: Input should be greater than or equal to 1"
    if limit > MAX_LIST_LIMIT:
        return f"limit: Input should be less than or equal to {MAX_LIST_LIMIT}"
    return limit
