"""Webhook notifications: POST a small JSON document to a URL the user gave (``run
--notify URL``), without ever failing or stalling the run.

:meth:`WebhookNotifier.send` returns whether the document was delivered and never raises:
a failure is logged (a warning) and that is all. One notification is tried for at most
``retry_window_s`` (:data:`NOTIFY_RETRY_WINDOW_S`) from its first attempt: each attempt is
bounded as a whole (:data:`NOTIFY_ATTEMPT_TIMEOUT_S`); transport errors, 408, 409, 425, 429
and 5xx are tried again after a doubling back-off (:data:`NOTIFY_FIRST_BACKOFF_S`, at most
:data:`NOTIFY_MAX_BACKOFF_S`), or after the answer's ``retry-after`` when it fits in what is
left of the window (a longer one ends the tries); any other answer is final. Redirects are
not followed. Notifications of one notifier are paced with aiolimiter, bursts of
:data:`NOTIFY_BURST` then one a second (Slack's rate for one webhook), so a thousand batches
ending at once do not hammer the receiver.

A webhook URL is often a secret in itself (Slack's and Teams' carry their token in the
path), so it is never logged, printed or stored: messages name its host only
(:func:`webhook_host`), and the answer's body is never read, only its status line, clipped.
httpx's client logs each request's full URL at INFO (shown with ``-vv``); while a notifier is
open, a filter on the ``httpx`` logger replaces its URL there with the host.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiolimiter import AsyncLimiter

from batchrun.transport.classify import parse_retry_after_s
from batchrun.transport.http import USER_AGENT

log = logging.getLogger(__name__)

# The most one attempt may take, connecting and answering included.
NOTIFY_ATTEMPT_TIMEOUT_S = 5.0
# The most time one notification is tried for, from its first attempt.
NOTIFY_RETRY_WINDOW_S = 10.0
# The wait before the second attempt; it doubles after each attempt, up to the most.
NOTIFY_FIRST_BACKOFF_S = 0.5
NOTIFY_MAX_BACKOFF_S = 4.0
# Pacing: bursts of NOTIFY_BURST notifications, then one every NOTIFY_BURST_PERIOD_S /
# NOTIFY_BURST seconds.
NOTIFY_BURST = 5
NOTIFY_BURST_PERIOD_S = 5.0
# Answers worth another attempt: the receiver is busy, restarting or rate-limiting.
_TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
# What a log line keeps of an answer's reason phrase or of an error's text.
_MAX_REASON_CHARS = 60
_MAX_ERROR_CHARS = 160


def webhook_host(url: str) -> str:
    """The host (and port, when one is given) of ``url``: all a message may say of it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "?"
    if ":" in host:
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


@dataclass(frozen=True)
class _Failed:
    """An attempt that did not deliver: why (no secret in it), and whether to try again
    (after ``retry_after_s`` when the receiver said)."""

    why: str
    retry: bool
    retry_after_s: float | None = None


class WebhookNotifier:
    """POSTs JSON documents to one webhook URL; :meth:`send` may be called from several
    tasks at once. Nothing stays open between notifications (they are rare), so there is
    nothing to close."""

    def __init__(
        self,
        url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        attempt_timeout_s: float = NOTIFY_ATTEMPT_TIMEOUT_S,
        retry_window_s: float = NOTIFY_RETRY_WINDOW_S,
        first_backoff_s: float = NOTIFY_FIRST_BACKOFF_S,
        max_backoff_s: float = NOTIFY_MAX_BACKOFF_S,
    ) -> None:
        """``url`` must already be checked (http or https, with a host); ``transport``
        replaces the network (tests)."""
        self._url = url
        self.host = webhook_host(url)
        self._attempt_timeout_s = attempt_timeout_s
        self._retry_window_s = retry_window_s
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        # A user:password@ in the URL is sent as basic auth (httpx's client does it).
        self._headers = {"user-agent": USER_AGENT, "content-type": "application/json"}
        self._transport = transport
        self._pacer = AsyncLimiter(NOTIFY_BURST, NOTIFY_BURST_PERIOD_S)

    def __repr__(self) -> str:
        return f"WebhookNotifier(host={self.host!r})"

    async def send(self, document: Mapping[str, Any], *, what: str) -> bool:
        """POST ``document`` as JSON; True once a 2xx answer came. Never raises (but lets a
        cancellation through): a failure is logged as a warning that names ``what`` (say,
        "batch msgbatch_1 ended") and the host, never the URL."""
        try:
            body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            log.warning("notification of %s not sent: not JSON (%s)", what, exc)
            return False
        await self._pacer.acquire()
        hide_url = _HideUrl(self._url, self.host)
        httpx_log = logging.getLogger("httpx")
        httpx_log.addFilter(hide_url)
        try:
            # Proxies come from the environment as for every other request (trust_env).
            async with httpx.AsyncClient(transport=self._transport, follow_redirects=False) as http:
                return await self._tries(http, body, what)
        except Exception as exc:  # a proxy variable httpx cannot read, say: still not raised
            log.warning(
                "notification of %s not sent to %s: %s", what, self.host, self._error_text(exc)
            )
            return False
        finally:
            httpx_log.removeFilter(hide_url)

    async def _tries(self, http: httpx.AsyncClient, body: bytes, what: str) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_window_s
        backoff_s = self._first_backoff_s
        attempts = 0
        while True:
            attempts += 1
            timeout_s = min(self._attempt_timeout_s, max(deadline - loop.time(), 0.1))
            failure = await self._attempt(http, body, timeout_s)
            if failure is None:
                log.debug("notification of %s delivered to %s", what, self.host)
                return True
            if not failure.retry:
                log.warning(
                    "notification of %s not delivered to %s: %s", what, self.host, failure.why
                )
                return False
            wait_s = backoff_s if failure.retry_after_s is None else failure.retry_after_s
            if loop.time() + wait_s >= deadline:
                log.warning(
                    "notification of %s not delivered to %s after %d attempts: %s",
                    what,
                    self.host,
                    attempts,
                    failure.why,
                )
                return False
            await asyncio.sleep(wait_s)
            backoff_s = min(backoff_s * 2, self._max_backoff_s)

    async def _attempt(
        self, http: httpx.AsyncClient, body: bytes, timeout_s: float
    ) -> _Failed | None:
        """One POST; None when delivered. The answer's body is never read."""
        try:
            async with asyncio.timeout(timeout_s):
                request = http.build_request(
                    "POST", self._url, content=body, headers=self._headers, timeout=timeout_s
                )
                response = await http.send(request, stream=True)
                await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return _Failed(f"no answer within {timeout_s:g} s", retry=True)
        except httpx.TransportError as exc:
            return _Failed(self._error_text(exc), retry=True)
        except Exception as exc:  # never raised to the caller: a notification is a courtesy
            return _Failed(self._error_text(exc), retry=False)
        status = response.status_code
        if 200 <= status < 300:
            return None
        why = f"HTTP {status} {response.reason_phrase[:_MAX_REASON_CHARS]}".rstrip()
        if 300 <= status < 400:
            return _Failed(f"{why}; redirects are not followed: give the final URL", retry=False)
        if status in _TRANSIENT_STATUSES or status >= 500:
            return _Failed(why, retry=True, retry_after_s=parse_retry_after_s(response.headers))
        return _Failed(why, retry=False)

    def _error_text(self, exc: BaseException) -> str:
        """The error's type and text, with the URL, its path and its query cut out."""
        text = str(exc)
        parts = urlsplit(self._url)
        for secret in (self._url, parts.path, parts.query, parts.password):
            if secret and secret != "/":
                text = text.replace(secret, "…")
        text = text[:_MAX_ERROR_CHARS]
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _HideUrl(logging.Filter):
    """Replaces one URL with its host in the records of the logger it is added to."""

    def __init__(self, url: str, host: str) -> None:
        super().__init__()
        # As given, and as httpx writes it (a "/" added, the host in lower case...).
        self._forms = {url, str(httpx.URL(url))}
        self._shown = f"<webhook {host}>"

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(self._hides(arg) for arg in args):
            record.args = tuple(self._shown if self._hides(arg) else arg for arg in args)
        return True

    def _hides(self, arg: object) -> bool:
        return isinstance(arg, httpx.URL | str) and str(arg) in self._forms
