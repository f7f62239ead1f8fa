"""Plain values that cross the store boundary, so callers need not import SQLAlchemy."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from batchrun.policy import Usage

ProcessingStatus = Literal["in_progress", "canceling", "ended"]


@dataclass(frozen=True)
class NewBatch:
    """A batch about to be stored."""

    id: str
    name: str | None
    endpoint: str
    source: str | None
    created_at: datetime
    expires_at: datetime


# Invalid lines kept by `submit --skip-invalid` that have no usable custom_id of their own
# (missing, invalid or a duplicate) are named after their line: line-17.
PLACEHOLDER_PREFIX = "line-"


@dataclass(frozen=True)
class RejectedLine:
    """Why a request line is invalid, kept as its errored result (``submit --skip-invalid``).

    ``body`` is the Anthropic error object as JSON text, exported as the result's ``error``.
    """

    error_type: str
    message: str
    body: str


@dataclass(frozen=True)
class NewRequest:
    """One request line about to be stored.

    A valid line is queued. A line with ``rejected`` set is stored errored, with its result;
    its ``custom_id`` is None when the line has no usable one, and the store then gives it a
    placeholder (`placeholder_custom_ids`).
    """

    line_no: int
    custom_id: str | None
    model: str
    max_tokens: int
    params_json: str
    estimated_input_tokens: int | None = None
    rejected: RejectedLine | None = None


def placeholder_custom_ids(line_nos: Iterable[int], taken: Collection[str]) -> dict[int, str]:
    """custom_ids for invalid lines without one: line number → ``line-N``, or ``line-N-2``,
    ``line-N-3``... when the batch already uses that id (``taken``)."""
    used = set(taken)
    names: dict[int, str] = {}
    for line_no in line_nos:
        name = f"{PLACEHOLDER_PREFIX}{line_no}"
        suffix = 2
        while name in used:
            name = f"{PLACEHOLDER_PREFIX}{line_no}-{suffix}"
            suffix += 1
        used.add(name)
        names[line_no] = name
    return names


@dataclass(frozen=True)
class ClaimedRequest:
    """A request a worker now holds under its lease."""

    id: int
    batch_id: str
    custom_id: str
    model: str
    max_tokens: int
    params_json: str
    attempts: int
    failures: int
    estimated_input_tokens: int | None = None


@dataclass(frozen=True)
class FinishedRequest:
    """A final outcome to record: succeeded or errored, with what the response said."""

    request_id: int
    batch_id: str
    custom_id: str
    result_type: str
    attempts: int
    completed_at: datetime
    http_status: int | None = None
    model: str | None = None
    stop_reason: str | None = None
    usage: Usage | None = None
    error_type: str | None = None
    error_message: str | None = None
    latency_ms: int | None = None
    estimated_input_tokens: int | None = None
    request_ref: str | None = None
    body: str | None = None


@dataclass(frozen=True)
class RetryLater:
    """A request going back to the queue until ``not_before``."""

    request_id: int
    not_before: datetime
    failures: int
    last_error: str | None


@dataclass(frozen=True)
class RequestCounts:
    """Requests of a batch per state, as in Anthropic's MessageBatch."""

    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0

    @property
    def total(self) -> int:
        return self.processing + self.succeeded + self.errored + self.canceled + self.expired


@dataclass(frozen=True)
class TokenTotals:
    """Tokens used by the finished requests of a batch."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@dataclass(frozen=True)
class BatchSummary:
    """A batch as ``status`` and ``list`` show it."""

    id: str
    name: str | None
    endpoint: str
    source: str | None
    created_at: datetime
    expires_at: datetime
    cancel_initiated_at: datetime | None
    ended_at: datetime | None
    paused_reason: str | None
    counts: RequestCounts = field(default_factory=RequestCounts)
    tokens: TokenTotals = field(default_factory=TokenTotals)

    @property
    def processing_status(self) -> ProcessingStatus:
        if self.ended_at is not None:
            return "ended"
        if self.cancel_initiated_at is not None:
            return "canceling"
        return "in_progress"


@dataclass(frozen=True)
class ResultRow:
    """One request of a batch with its result, in input order, for export."""

    custom_id: str
    line_no: int
    state: str
    body: str | None
    error_type: str | None
    error_message: str | None
