"""A provider's batch API (the batch lane): create, retrieve, list, cancel, and the results.

Two styles, in the :data:`BATCH_API_STYLES` registry:

- ``anthropic``: Anthropic's Message Batches API. ``POST {path}`` creates, ``GET
  {path}/{id}`` retrieves, ``GET {path}?limit=&after_id=`` lists newest first,
  ``POST {path}/{id}/cancel`` cancels, and the results are read from the batch's
  ``results_url`` once it has ended (JSONL, one line per request, in any order), or from
  ``{path}/{id}/results`` when that URL names another origin.
- ``aimlapi``: AIMLAPI's ``POST {path}`` (201), ``GET {path}?batch_id=ID`` (the batch while it
  runs; its results as JSONL once finished) and ``POST {path}/cancel/{id}``. Its response
  bodies are not documented: batchrun reads them as Anthropic's batch object (also taking
  ``status`` for ``processing_status``) and its results as Anthropic's result lines. It has
  no list of batches, so a create whose fate is unknown cannot be reconciled
  (``recent`` answers :class:`CallFailed` ``unsupported``).

Every call answers a value: the batch as the provider reports it (:class:`ProviderBatchInfo`)
or :class:`CallFailed` saying what kind of failure it was. A create distinguishes failures
that prove nothing was created (a refusal, a connection never made) from those that leave it
unknown (``unknown_outcome``: a timeout or a server error after the body was sent), which
the lane must reconcile before creating again. Keys never appear in what is returned: the
answers are redacted as the Messages client's are.

Credentials (the key, ``headers_env`` values, cookies) go only to the endpoint's own origin
(the scheme, host and port of its ``base_url``). A ``results_url`` on another origin is not
fetched: the results are read from the endpoint's own results path instead (said once per
host in the log, the host only). No call follows a redirect, except the results download:
to the same origin with the credentials, to another origin without any (as a browser
drops them; a gateway may hand the file to storage), at most ``MAX_RESULTS_REDIRECTS`` hops.

The results download is bounded as a whole (the endpoint's ``batch_results_max_bytes`` and
``batch_results_max_s``), hands what it read to the caller as it arrives (complete lines, at
least every ``RESULTS_FLUSH_S``), and ends within moments of a stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx

from batchrun.transport.auth import RequestHeaders, redact, redact_bytes
from batchrun.transport.batch_styles import BATCH_API_STYLES
from batchrun.transport.classify import parse_retry_after_s
from batchrun.transport.endpoints import DEFAULT_MAX_RESPONSE_BYTES, Endpoint
from batchrun.transport.http import USER_AGENT, read_capped

log = logging.getLogger(__name__)

# Calls other than the create and the results are small; they get this long.
CALL_TIMEOUT_S = 60.0
# A create carries up to 256 MB: it gets longer.
CREATE_TIMEOUT_S = 600.0
# Batches per page when listing (Anthropic allows up to 1,000), and pages at most.
LIST_PAGE_SIZE = 100
LIST_MAX_PAGES = 20
# The longest result line read (a Message is well under this; a longer line is refused).
MAX_RESULT_LINE_BYTES = DEFAULT_MAX_RESPONSE_BYTES
# Complete result lines wait at most this long before they are handed on (imported).
RESULTS_FLUSH_S = 1.0
# Redirects followed by a results download (no other call follows any).
MAX_RESULTS_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MESSAGE_CHARS = 300

FailureKind = Literal[
    "transient",  # try again later (429, 5xx, timeouts on a read-only call)
    "final",  # refused; trying again will not help (4xx)
    "auth",  # 401/402/403: every call will fail the same way
    "not_found",  # 404: the provider does not know the batch
    "too_large",  # 413: the create body is over the provider's limit
    "unknown_outcome",  # a create that may or may not have happened
    "unsupported",  # the style cannot do this (AIMLAPI has no list)
    "cut_off",  # the results download passed its size or time bound
    "stopped",  # the results download was stopped (the run is stopping)
]


@dataclass(frozen=True)
class ProviderBatchInfo:
    """A provider batch as the provider reports it."""

    id: str
    status: str  # in_progress, canceling or ended
    created_at: datetime | None = None
    ended_at: datetime | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    results_url: str | None = None

    @property
    def request_total(self) -> int:
        """Its requests: the counts always sum to them."""
        return sum(self.counts.values())

    @property
    def ended(self) -> bool:
        return self.status == "ended"


@dataclass(frozen=True)
class CallFailed:
    """A call to the batch API that did not give what was asked."""

    kind: FailureKind
    message: str
    status: int | None = None
    retry_after_s: float | None = None


LineHandler = Callable[[list[bytes]], Awaitable[None]]


class BatchApiClient:
    """Calls one endpoint's batch API."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        endpoint: Endpoint,
        headers: RequestHeaders,
        call_timeout_s: float = CALL_TIMEOUT_S,
        create_timeout_s: float = CREATE_TIMEOUT_S,
    ) -> None:
        if endpoint.batch_api is None:
            raise ValueError(f"endpoint {endpoint.name} has no batch API")
        self._http = http
        self._style = BATCH_API_STYLES.get(endpoint.batch_api.style)
        self._url = endpoint.batches_url
        self._origin = origin_of(endpoint.base_url)
        self._results_max_bytes = endpoint.batch_api.results_max_bytes
        self._results_max_s = endpoint.batch_api.results_max_s
        # Hosts of other origins a results_url or a redirect named, each said once.
        self._foreign_told: set[str] = set()
        self._headers = {"user-agent": USER_AGENT, **headers.headers}
        self._secrets = headers.secrets
        self._call_timeout_s = call_timeout_s
        self._create_timeout_s = create_timeout_s
        self.endpoint = endpoint.name

    @property
    def can_list(self) -> bool:
        """Whether the provider lists its batches (needed to reconcile an unknown create)."""
        return self._style.can_list

    async def create(self, body: bytes) -> ProviderBatchInfo | CallFailed:
        """Create a provider batch from ``body`` (``{"requests": [...]}``)."""
        headers = {**self._headers, "content-type": "application/json"}
        try:
            response = await self._http.post(
                self._url, content=body, headers=headers, timeout=self._create_timeout_s
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # The connection was never made: nothing was sent.
            return CallFailed("transient", self._describe("could not connect", exc))
        except httpx.HTTPError as exc:
            return CallFailed("unknown_outcome", self._describe("the create was cut off", exc))
        if response.status_code in self._style.create_status:
            return self._batch_of(response.content, response.status_code, creating=True)
        failed = self._failure(response.status_code, response.headers, response.content)
        if failed.kind == "transient" and response.status_code not in (429, 503, 529):
            # A 500 or 504 may come after the batch was made: only 429 and overload answers
            # are refusals up front.
            return CallFailed("unknown_outcome", failed.message, failed.status)
        return failed

    async def retrieve(self, batch_id: str) -> ProviderBatchInfo | CallFailed:
        """The provider batch as it is now."""
        url, query = self._style.retrieve(self._url, batch_id)
        answer = await self._get(url, query)
        if isinstance(answer, CallFailed):
            return answer
        status, headers, body = answer
        if status != 200:
            return self._failure(status, headers, body)
        if self._style.results_on_retrieve and _is_results(headers, body):
            # AIMLAPI: the results themselves mean it has ended.
            return ProviderBatchInfo(batch_id, "ended", results_url=_with_query(url, query))
        return self._batch_of(body, status)

    async def recent(self, since: datetime) -> list[ProviderBatchInfo] | CallFailed:
        """The provider's batches created since ``since`` (newest first), as far as
        ``LIST_MAX_PAGES`` pages reach; ``unsupported`` where the provider has no list."""
        if not self._style.can_list:
            return CallFailed("unsupported", f"the {self._style.name} batch API lists no batches")
        found: list[ProviderBatchInfo] = []
        after: str | None = None
        for _ in range(LIST_MAX_PAGES):
            query = {"limit": str(LIST_PAGE_SIZE)} | ({"after_id": after} if after else {})
            answer = await self._get(self._url, query)
            if isinstance(answer, CallFailed):
                return answer
            status, headers, body = answer
            if status != 200:
                return self._failure(status, headers, body)
            page = _json_object(body)
            data = page.get("data") if page is not None else None
            if not isinstance(data, list):
                return CallFailed("transient", "the list of batches is not a page of batches")
            for item in data:
                info = _info_of(item)
                if info is None:
                    continue
                if info.created_at is not None and info.created_at < since:
                    return found
                found.append(info)
            last = page.get("last_id") if page is not None else None
            if not page or not page.get("has_more") or not isinstance(last, str):
                return found
            after = last
        return found

    async def cancel(self, batch_id: str) -> ProviderBatchInfo | CallFailed:
        """Ask the provider to cancel the batch (what it has finished stays)."""
        try:
            response = await self._http.post(
                self._style.cancel(self._url, batch_id),
                headers=self._headers,
                timeout=self._call_timeout_s,
            )
        except httpx.HTTPError as exc:
            return CallFailed("transient", self._describe("the cancel failed", exc))
        if response.status_code in (200, 201, 202):
            info = self._batch_of(response.content, response.status_code)
            return (
                info
                if isinstance(info, ProviderBatchInfo)
                else ProviderBatchInfo(batch_id, "canceling")
            )
        return self._failure(response.status_code, response.headers, response.content)

    async def results(
        self,
        info: ProviderBatchInfo,
        handle: LineHandler,
        *,
        chunk_lines: int = 1000,
        stop: asyncio.Event | None = None,
    ) -> CallFailed | None:
        """Stream the ended batch's results to ``handle`` in chunks of complete lines (each
        one request's result, redacted), in order and as they arrive: a chunk goes on once
        it holds ``chunk_lines`` lines or its first line waited ``RESULTS_FLUSH_S``. None
        once every line was handled; else why the download ended early (``stopped``: ``stop``
        was set; ``cut_off``: past the endpoint's bounds; ``transient`` or ``final``), every
        complete line read before that handled all the same."""
        if not info.results_url:
            return CallFailed("transient", f"batch {info.id} has no results_url yet")
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self._results_max_s
        # The network side reads into this; only the handling below touches the database,
        # so the reading can be cut off at any moment without cutting an import in two.
        arrived: asyncio.Queue[list[bytes] | CallFailed | None] = asyncio.Queue(maxsize=8)
        reader = asyncio.create_task(self._read_results(info, arrived), name="batchrun-results")
        stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
        getter: asyncio.Future[list[bytes] | CallFailed | None] | None = None
        chunk: list[bytes] = []
        flush_at = 0.0
        outcome: CallFailed | None = None
        try:
            while True:
                if stopped is not None and stopped.done():
                    outcome = CallFailed(
                        "stopped", f"reading the results of batch {info.id} stopped"
                    )
                    break
                now = loop.time()
                if now >= ends_at:
                    outcome = CallFailed(
                        "cut_off",
                        f"reading the results of batch {info.id} took longer than "
                        f"{self._results_max_s:g} s (the endpoint's batch_results_max_s)",
                    )
                    break
                if chunk and now >= flush_at:
                    await handle(chunk)
                    chunk = []
                    continue
                wait_s = min(ends_at, flush_at) - now if chunk else ends_at - now
                if getter is None:
                    getter = asyncio.ensure_future(arrived.get())
                waiting: set[asyncio.Future[Any]] = {getter}
                if stopped is not None:
                    waiting.add(stopped)
                await asyncio.wait(waiting, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    continue
                item, getter = getter.result(), None
                if item is None or isinstance(item, CallFailed):
                    outcome = item
                    break
                if not chunk:
                    flush_at = loop.time() + RESULTS_FLUSH_S
                chunk.extend(item)
                while len(chunk) >= chunk_lines:
                    await handle(chunk[:chunk_lines])
                    chunk = chunk[chunk_lines:]
                    flush_at = loop.time() + RESULTS_FLUSH_S
        finally:
            for waiter in (getter, stopped, reader):
                if waiter is not None:
                    waiter.cancel()
            await asyncio.gather(
                *(w for w in (getter, stopped, reader) if w is not None), return_exceptions=True
            )
        # What was read before the end, whatever ended it, is handled.
        while not arrived.empty():
            item = arrived.get_nowait()
            if isinstance(item, list):
                chunk.extend(item)
        for start in range(0, len(chunk), chunk_lines):
            await handle(chunk[start : start + chunk_lines])
        return outcome

    async def _read_results(
        self, info: ProviderBatchInfo, arrived: asyncio.Queue[list[bytes] | CallFailed | None]
    ) -> None:
        """Read the results into ``arrived`` (lists of complete lines, redacted), then None
        at their end or CallFailed; following redirects, with the credentials only while they
        stay on the endpoint's own origin."""
        url = self._results_url_of(info)
        credentialed = True
        try:
            for _ in range(MAX_RESULTS_REDIRECTS + 1):
                async with self._results_stream(url, credentialed=credentialed) as response:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECT_STATUSES and location:
                        url = str(response.url.join(location))
                        if credentialed and not self._is_own(url):
                            credentialed = False
                            self._tell_foreign(info.id, url, "redirected its results")
                        continue
                    if response.status_code != 200:
                        answer = await read_capped(response, 64 * 1024)
                        await arrived.put(self._failure(answer.status, answer.headers, answer.body))
                        return
                    await arrived.put(await self._lines_of(response, info.id, arrived))
                    return
            await arrived.put(
                CallFailed(
                    "final",
                    f"the results of batch {info.id} were redirected more than "
                    f"{MAX_RESULTS_REDIRECTS} times",
                )
            )
        except httpx.HTTPError as exc:
            await arrived.put(
                CallFailed("transient", self._describe("reading the results failed", exc))
            )

    async def _lines_of(
        self,
        response: httpx.Response,
        batch_id: str,
        arrived: asyncio.Queue[list[bytes] | CallFailed | None],
    ) -> CallFailed | None:
        """Put the body's complete lines into ``arrived`` as they come; None at its end, or
        CallFailed past the size bound or a line over the size limit."""
        size = 0
        pending = bytearray()
        async for piece in response.aiter_bytes():
            size += len(piece)
            if size > self._results_max_bytes:
                return CallFailed(
                    "cut_off",
                    f"the results of batch {batch_id} passed {self._results_max_bytes:,} bytes "
                    "(the endpoint's batch_results_max_bytes)",
                )
            pending += piece
            end = pending.rfind(b"\n")
            if end < 0:
                if len(pending) > MAX_RESULT_LINE_BYTES:
                    return CallFailed(
                        "final", f"a result line of batch {batch_id} is over the size limit"
                    )
                continue
            lines = bytes(pending[:end]).split(b"\n")
            del pending[: end + 1]
            found = [redact_bytes(line, self._secrets) for line in lines if line.strip()]
            if found:
                await arrived.put(found)
        if pending.strip():
            await arrived.put([redact_bytes(bytes(pending), self._secrets)])
        return None

    @asynccontextmanager
    async def _results_stream(
        self, url: str, *, credentialed: bool
    ) -> AsyncIterator[httpx.Response]:
        """A results GET: on the endpoint's client with its headers, or (another origin) on a
        client of its own that carries no credential and no cookie."""
        timeout = httpx.Timeout(self._create_timeout_s, connect=self._call_timeout_s)
        if credentialed:
            headers = {**self._headers, "accept": "application/binary"}
            async with self._http.stream("GET", url, headers=headers, timeout=timeout) as answer:
                yield answer
            return
        bare = {"user-agent": USER_AGENT, "accept": "application/binary"}
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http,
            http.stream("GET", url, headers=bare) as answer,
        ):
            yield answer

    def _results_url_of(self, info: ProviderBatchInfo) -> str:
        """The batch's results_url when it is on the endpoint's own origin; else the
        endpoint's own results path for the batch."""
        given = info.results_url or ""
        if self._is_own(given):
            return given
        url, query = self._style.results(self._url, info.id)
        self._tell_foreign(info.id, given, "names a results_url")
        return _with_query(url, query)

    def _is_own(self, url: str) -> bool:
        """Whether ``url`` is on the endpoint's own origin (and names no user of its own)."""
        origin = origin_of(url)
        return origin is not None and origin == self._origin and not httpx.URL(url).userinfo

    def _tell_foreign(self, batch_id: str, url: str, what: str) -> None:
        """Log, once per host, that a batch pointed at another origin (the host only: a
        URL's path and query may hold a token)."""
        origin = origin_of(url)
        host = origin[1] if origin is not None else "an unreadable URL"
        if host in self._foreign_told:
            return
        self._foreign_told.add(host)
        log.warning(
            "provider batch %s %s on another origin (%s); credentials go only to the "
            "endpoint's own origin, so %s",
            batch_id,
            what,
            host,
            "the results are read from the endpoint's own results path"
            if what.startswith("names")
            else "it is followed without them",
        )

    # -- helpers --------------------------------------------------------------------------

    async def _get(
        self, url: str, query: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes] | CallFailed:
        try:
            async with self._http.stream(
                "GET", url, params=dict(query), headers=self._headers, timeout=self._call_timeout_s
            ) as response:
                answer = await read_capped(response, MAX_RESULT_LINE_BYTES)
        except httpx.HTTPError as exc:
            return CallFailed("transient", self._describe("the call failed", exc))
        return answer.status, answer.headers, answer.body

    def _batch_of(
        self, body: bytes, status: int, *, creating: bool = False
    ) -> ProviderBatchInfo | CallFailed:
        info = _info_of(_json_object(body))
        if info is None:
            text = redact(body[:_MESSAGE_CHARS].decode(errors="replace"), self._secrets)
            # A create answered with something that is not a batch: it may exist anyway.
            kind: FailureKind = "unknown_outcome" if creating else "transient"
            return CallFailed(kind, f"HTTP {status} without a batch object: {text!r}", status)
        return info

    def _failure(self, status: int, headers: Mapping[str, str], body: bytes) -> CallFailed:
        parsed = _json_object(redact_bytes(body, self._secrets))
        error = parsed.get("error") if parsed else None
        detail = ""
        if isinstance(error, dict):
            detail = f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")
        elif body:
            detail = redact(body[:_MESSAGE_CHARS].decode(errors="replace"), self._secrets)
        message = f"HTTP {status}" + (f" {detail[:_MESSAGE_CHARS]}" if detail else "")
        retry_after_s = parse_retry_after_s(headers)
        if status in (401, 402, 403):
            return CallFailed("auth", message, status)
        if status == 404:
            return CallFailed("not_found", message, status)
        if status == 413:
            return CallFailed("too_large", message, status)
        if status in (408, 409, 429) or status >= 500:
            return CallFailed("transient", message, status, retry_after_s)
        return CallFailed("final", message, status)

    def _describe(self, what: str, exc: httpx.HTTPError) -> str:
        name = type(exc).__name__
        return redact(f"{what} ({name}: {exc})" if str(exc) else f"{what} ({name})", self._secrets)


def origin_of(url: str) -> tuple[str, str, int | None] | None:
    """A URL's origin: its scheme, host and port (the scheme's default when not given);
    None when it has none."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    scheme, host = parsed.scheme.lower(), parsed.host.lower()
    if not scheme or not host:
        return None
    return scheme, host, parsed.port or _DEFAULT_PORTS.get(scheme)


def _with_query(url: str, query: Mapping[str, str]) -> str:
    return str(httpx.URL(url, params=dict(query))) if query else url


def _is_results(headers: Mapping[str, str], body: bytes) -> bool:
    if "jsonl" in headers.get("content-type", ""):
        return True
    first = body.lstrip()[:4096].split(b"\n", 1)[0]
    parsed = _json_object(first)
    return parsed is not None and "custom_id" in parsed and "result" in parsed


def _json_object(body: bytes | None) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


_STATUS_WORDS = {
    "in_progress": "in_progress",
    "canceling": "canceling",
    "cancelling": "canceling",
    "ended": "ended",
    "completed": "ended",
    "finished": "ended",
    "cancelled": "ended",
    "canceled": "ended",
    "expired": "ended",
    "failed": "ended",
}


def _info_of(item: Any) -> ProviderBatchInfo | None:
    """A batch object (Anthropic's shape; ``status`` accepted for ``processing_status``),
    or None when ``item`` is not one."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        return None
    raw_status = item.get("processing_status", item.get("status", "in_progress"))
    status = _STATUS_WORDS.get(str(raw_status).lower(), "in_progress")
    counts_in = item.get("request_counts")
    counts: dict[str, int] = {}
    if isinstance(counts_in, dict):
        for key, value in counts_in.items():
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
                counts[str(key)] = value
    results_url = item.get("results_url")
    return ProviderBatchInfo(
        id=item["id"][:200],
        status=status,
        created_at=_time(item.get("created_at")),
        ended_at=_time(item.get("ended_at")),
        counts=counts,
        results_url=results_url if isinstance(results_url, str) and results_url else None,
    )


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def created_batch_body(lines: list[bytes]) -> bytes:
    """The create body from each request's JSON (``{"custom_id", "params"}``)."""
    return b'{"requests":[' + b",".join(lines) + b"]}"


@asynccontextmanager
async def open_batch_api(
    endpoint: Endpoint,
    headers: RequestHeaders,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    create_timeout_s: float | None = None,
) -> AsyncIterator[BatchApiClient]:
    """A client of ``endpoint``'s batch API on its own HTTP connection pool (``transport``:
    the in-process simulator's)."""
    timeout = httpx.Timeout(CALL_TIMEOUT_S, connect=10.0)
    # No redirect is followed with the credentials (the results download decides its own).
    async with httpx.AsyncClient(
        timeout=timeout, transport=transport, follow_redirects=False
    ) as http:
        yield BatchApiClient(
            http,
            endpoint=endpoint,
            headers=headers,
            create_timeout_s=create_timeout_s or CREATE_TIMEOUT_S,
        )
