"""Pure decisions: what to write for an answer, and how long to wait before trying again.

The dispatch loop claims, waits, sends and hands the answer here; :func:`decide` says what
becomes of the request, as a value the loop matches on:

- :class:`Finish`: a result to record, succeeded or errored (a final failure, or a transient
  one with no attempt left);
- :class:`Retry`: back to the queue until a time, after a transient failure (or, in a pool,
  at once after an answer that could not be read: another member takes it, once);
- :class:`Pause`: a failure every request of the batch would share (credentials, billing, a
  spend limit): the batch pauses and this request goes back unsent.

Writes are a union of small types, one per way a request leaves a worker; the group writer
(``dispatch.writer``) matches them into one store transaction. Nothing here does I/O or reads
a clock: time and randomness come in as arguments, so the tests are tables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from batchrun.records import (
    ClaimedRequest,
    Fatal,
    FinishedRequest,
    Halt,
    Lane,
    Outcome,
    Retryable,
    RetryLater,
    SendFailure,
    Succeeded,
)

# How a halt pauses its batch, per kind; {endpoint}, {key_hint} and {detail} are filled in.
HALT_MESSAGES = {
    "authentication": "authentication failed for endpoint {endpoint}: check {key_hint}",
    "permission": "permission denied by endpoint {endpoint}: check that {key_hint} may use it",
    "billing": "endpoint {endpoint} refused the request for billing reasons: {detail}",
    "spend_limit": "endpoint {endpoint} reports that the spend limit is reached: {detail}",
}
# Up to this share of a back-off is taken off at random, so that many requests failing
# together do not come back together.
BACKOFF_JITTER_SHARE = 0.25
# How ``last_error`` begins after a pool member's answer could not be read (a 200 that is no
# Message): "unreadable answer from NAME: ...". The retry stores it, so the next try (in this
# worker or another, after a crash too) knows which member to avoid and that it is the last.
UNREADABLE_FROM = "unreadable answer from "
# The stored error type of a result whose last answer was a 200 with no Message in it (status,
# the report and the flat exports count it apart from the API's own errors); the exported
# error object keeps the API's ``api_error``, the only type its parsers know for it.
INVALID_RESPONSE_ERROR_TYPE = "invalid_response"


# -- writes: how a request leaves a worker --------------------------------------------------


@dataclass(frozen=True)
class Finish:
    """A final result to record (succeeded or errored)."""

    result: FinishedRequest


@dataclass(frozen=True)
class Retry:
    """Back to the queue until ``retry.not_before``, after a transient failure."""

    retry: RetryLater


@dataclass(frozen=True)
class Unsent:
    """Claimed but never sent (a pause, a drain, a shutdown while waiting): back to the queue
    as it was (a claim counts no attempt)."""

    request_id: int


@dataclass(frozen=True)
class Released:
    """Interrupted while in flight (a forced shutdown): back to the queue, counted as a send,
    since the endpoint may have received it."""

    request_id: int


@dataclass(frozen=True)
class Canceled:
    """Claimed but never sent, and its batch is being canceled."""

    request_id: int


@dataclass(frozen=True)
class Expired:
    """Claimed but never sent, and its batch has expired."""

    request_id: int


Write = Finish | Retry | Unsent | Released | Canceled | Expired


@dataclass(frozen=True)
class Pause:
    """Pause the request's batch with ``reason``; the request goes back unsent."""

    reason: str


Decision = Finish | Retry | Pause
StopKind = Literal["canceling", "expired", "ended", "paused", "drained", "shutdown"]


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off after transient failures: ``initial_delay_s``, twice that, four
    times... capped at ``max_delay_s``."""

    initial_delay_s: float
    max_delay_s: float


def decide(
    request: ClaimedRequest,
    outcome: Outcome,
    *,
    endpoint: str,
    key_hint: str,
    max_attempts: int,
    backoff: Backoff,
    now: datetime,
    latency_ms: int,
    input_estimate: int,
    jitter: float,
    failover: bool = False,
) -> Decision:
    """What becomes of ``request`` after ``outcome``.

    ``max_attempts`` counts the transient failures that end a request (429s do not count:
    waiting them out is pacing); a failure worth one more try at most (``at_most_once``: a
    200 whose body was cut) ends it the second time in a row. ``jitter`` is a number in
    [0, 1) that spreads back-offs.

    ``failover``: another endpoint may take the request (a member of its pool not out for
    bad credentials). An answer that could not be read (``unreadable``: a 200 that is no
    Message) is then sent once more, at once, to another member (:func:`unreadable_from`
    names the one to avoid), counted as an attempt; a second unreadable answer in a row, or
    the last attempt, ends it errored. Without ``failover`` such answers are judged as
    classified: a body that is not JSON is tried once more, JSON that is no Message is final.
    Either way the result is stored as :data:`INVALID_RESPONSE_ERROR_TYPE`.
    """
    sent_at = now - timedelta(milliseconds=latency_ms)
    match outcome:
        case Retryable(unreadable=True) | Fatal(unreadable=True) if failover:
            return _unreadable(
                request,
                outcome,
                endpoint=endpoint,
                max_attempts=max_attempts,
                now=now,
                latency_ms=latency_ms,
            )
        case Succeeded():
            return Finish(
                replace(
                    _succeeded(request, outcome, now, latency_ms, input_estimate),
                    endpoint=endpoint,
                    sent_at=sent_at,
                )
            )
        case Fatal(error=error, http_status=status, raw_body=raw_body):
            result = _errored(
                request, error, status, now, latency_ms, raw_body, _stored_type(outcome)
            )
            return Finish(replace(result, endpoint=endpoint, sent_at=sent_at))
        case Halt(kind=kind, detail=detail):
            message = HALT_MESSAGES[kind]
            return Pause(
                message.format(endpoint=endpoint, key_hint=key_hint, detail=detail or kind)
            )
        case Retryable():
            failures = request.failures + (0 if outcome.rate_limited else 1)
            again = outcome.at_most_once and request.last_error == outcome.reason
            if failures >= max_attempts or again:
                result = _gave_up(
                    request,
                    outcome.reason,
                    outcome.error,
                    outcome.http_status,
                    now,
                    latency_ms,
                    outcome.raw_body,
                    _stored_type(outcome),
                )
                return Finish(replace(result, endpoint=endpoint, sent_at=sent_at))
            delay_s = retry_delay_s(
                failures, retry_after_s=outcome.retry_after_s, backoff=backoff, jitter=jitter
            )
            return Retry(
                RetryLater(
                    request_id=request.id,
                    not_before=now + timedelta(seconds=delay_s),
                    failures=failures,
                    last_error=outcome.reason,
                    failed=SendFailure(
                        batch_id=request.batch_id,
                        sent_at=sent_at,
                        latency_ms=latency_ms,
                        endpoint=endpoint,
                        http_status=outcome.http_status,
                        error_type=_stored_type(outcome) or _error_type(outcome.error),
                    ),
                )
            )


def _stored_type(outcome: Retryable | Fatal) -> str | None:
    """The error type a result of ``outcome`` is stored with when it is not the error
    object's own: :data:`INVALID_RESPONSE_ERROR_TYPE` for an answer that could not be read."""
    return INVALID_RESPONSE_ERROR_TYPE if outcome.unreadable else None


def unreadable_from(last_error: str | None) -> str | None:
    """The pool member whose unreadable answer made the request's latest failure (see
    :data:`UNREADABLE_FROM`), or None: the next try should go to another member."""
    if last_error is None or not last_error.startswith(UNREADABLE_FROM):
        return None
    # Endpoint names hold no ':' (config.file), so the name ends at the first one.
    return last_error[len(UNREADABLE_FROM) :].split(":", 1)[0] or None


def _unreadable(
    request: ClaimedRequest,
    outcome: Retryable | Fatal,
    *,
    endpoint: str,
    max_attempts: int,
    now: datetime,
    latency_ms: int,
) -> Decision:
    """A pool member answered 200 with no Message: once to another member, at once; the
    second time in a row (or on the last attempt) errored, with what the server sent kept."""
    sent_at = now - timedelta(milliseconds=latency_ms)
    inner = outcome.error.get("error")
    said = str(inner.get("message", "")) if isinstance(inner, dict) else ""
    detail = outcome.reason if isinstance(outcome, Retryable) else said
    reason = f"{UNREADABLE_FROM}{endpoint}: {detail}"
    failures = request.failures + 1
    if unreadable_from(request.last_error) is not None or failures >= max_attempts:
        result = _gave_up(
            request,
            reason,
            outcome.error,
            outcome.http_status,
            now,
            latency_ms,
            outcome.raw_body,
            INVALID_RESPONSE_ERROR_TYPE,
        )
        return Finish(replace(result, endpoint=endpoint, sent_at=sent_at))
    return Retry(
        RetryLater(
            request_id=request.id,
            not_before=now,
            failures=failures,
            last_error=reason,
            failed=SendFailure(
                batch_id=request.batch_id,
                sent_at=sent_at,
                latency_ms=latency_ms,
                endpoint=endpoint,
                http_status=outcome.http_status,
                error_type=INVALID_RESPONSE_ERROR_TYPE,
            ),
        )
    )


def _error_type(error: Mapping[str, object]) -> str | None:
    """The ``type`` of an API error object, if it has one."""
    inner = error.get("error")
    kind = inner.get("type") if isinstance(inner, dict) else None
    return str(kind) if kind else None


def after_stop(request: ClaimedRequest, kind: StopKind) -> Write:
    """What a request that was waiting for its turn becomes when its batch stops."""
    if kind == "canceling":
        return Canceled(request.id)
    if kind == "expired":
        return Expired(request.id)
    return Unsent(request.id)


def retry_delay_s(
    failures: int, *, retry_after_s: float | None, backoff: Backoff, jitter: float
) -> float:
    """How long to wait after the ``failures``-th transient failure (1-based).

    The server's ``retry-after`` wins. Otherwise exponential back-off, with up to
    :data:`BACKOFF_JITTER_SHARE` of it taken off (``jitter`` in [0, 1) says how much).
    """
    if retry_after_s is not None:
        return retry_after_s
    exponent = max(failures - 1, 0)
    base = min(backoff.initial_delay_s * 2.0**exponent, backoff.max_delay_s)
    return base * (1 - BACKOFF_JITTER_SHARE * jitter)


def _succeeded(
    request: ClaimedRequest,
    outcome: Succeeded,
    now: datetime,
    latency_ms: int,
    input_estimate: int,
) -> FinishedRequest:
    return FinishedRequest(
        request_id=request.id,
        batch_id=request.batch_id,
        custom_id=request.custom_id,
        lane=Lane.REALTIME,
        result_type="succeeded",
        attempts=request.attempts + 1,
        completed_at=now,
        http_status=200,
        model=outcome.model,
        stop_reason=outcome.stop_reason,
        usage=outcome.usage,
        latency_ms=latency_ms,
        estimated_input_tokens=input_estimate,
        request_ref=outcome.request_id,
        body=outcome.body,
        raw_body=outcome.raw_body,
    )


def _gave_up(
    request: ClaimedRequest,
    reason: str,
    error_body: Mapping[str, object],
    http_status: int | None,
    now: datetime,
    latency_ms: int,
    raw_body: str | None,
    stored_type: str | None = None,
) -> FinishedRequest:
    """The errored result of a request whose attempts ran out (the latest failure:
    ``reason``, with the error object ``error_body``); its message says so first."""
    error = dict(error_body)
    found = error.get("error")
    inner = dict(found) if isinstance(found, dict) else {"type": "api_error"}
    said = str(inner.get("message", ""))
    # A transport failure's message is its reason; it is said once.
    # An unreadable answer's reason ends with the message already.
    more = "" if said == reason or (said and reason.endswith(said)) else f". {said}"
    inner["message"] = (
        f"gave up after {request.attempts + 1} attempts; last failure: {reason}{more}"
    ).strip()
    error["error"] = inner
    return _errored(request, error, http_status, now, latency_ms, raw_body, stored_type)


def _errored(
    request: ClaimedRequest,
    error: Mapping[str, object],
    http_status: int | None,
    now: datetime,
    latency_ms: int,
    raw_body: str | None = None,
    stored_type: str | None = None,
) -> FinishedRequest:
    """The errored result of ``request``, carrying the API's error object ``error`` (and what
    the server sent, when that was not the error object); stored under the error object's
    type, or ``stored_type`` when given."""
    inner = error.get("error")
    error_type = stored_type or (str(inner.get("type")) if isinstance(inner, dict) else "api_error")
    message = str(inner.get("message", "")) if isinstance(inner, dict) else ""
    request_ref = error.get("request_id")
    return FinishedRequest(
        request_id=request.id,
        batch_id=request.batch_id,
        custom_id=request.custom_id,
        lane=Lane.REALTIME,
        result_type="errored",
        attempts=request.attempts + 1,
        completed_at=now,
        http_status=http_status,
        error_type=error_type,
        error_message=message,
        latency_ms=latency_ms,
        request_ref=str(request_ref) if request_ref else None,
        body=json.dumps(error, separators=(",", ":"), ensure_ascii=False),
        raw_body=raw_body,
    )
