"""A batch's throughput: its answers, input and output tokens per minute, as the dashboard's
card shows it and as the limits in force (:mod:`batchrun.ops.views.limits`) measure the
batch's use of them against.

Throughput is measured from the stored answers (``results.completed_at``), so it is right
whichever workers send the batch. A batch still in progress is measured over the last
:data:`RECENT_WINDOW_S` (or since its first answer, if that is later, but over
:data:`MIN_SPAN_S` at least); an ended one over its whole span, from its first answer to its
last. Only the answers sent in real time count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from batchrun.limits.dimensions import Amounts
from batchrun.records import BatchSummary, Lane
from batchrun.store.usage import Usage

# A running batch's throughput is measured over its answers of the last minute.
RECENT_WINDOW_S = 60.0
# ...and over 10 s at least: a batch's first answers, a second apart, are no rate yet.
MIN_SPAN_S = 10.0


def recent_since(now: datetime) -> datetime:
    """Where the recent window ending at ``now`` starts: the usage to read with ``since``."""
    return now - timedelta(seconds=RECENT_WINDOW_S)


@dataclass(frozen=True)
class Throughput:
    """A batch's answers, input and output tokens per minute, measured over the ``recent``
    window (a batch in progress) or as the ``average`` of its whole span (an ended one)."""

    requests_per_min: float
    input_tokens_per_min: float
    output_tokens_per_min: float
    window: Literal["recent", "average"]

    @property
    def amounts(self) -> Amounts:
        """Per minute, as the limits count it."""
        return Amounts(self.requests_per_min, self.input_tokens_per_min, self.output_tokens_per_min)


@dataclass(frozen=True)
class Sent:
    """A batch's answers sent in real time (what its throughput and the limits count)."""

    answered: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    recent_requests: int = 0
    recent_input_tokens: int = 0
    recent_output_tokens: int = 0

    @classmethod
    def of(cls, groups: Iterable[Usage]) -> Sent:
        found = cls()
        for group in groups:
            if not group.sent or group.lane != Lane.REALTIME:
                continue
            found = cls(
                found.answered + group.answers,
                found.input_tokens + group.input_tokens + group.cache_creation_input_tokens,
                found.output_tokens + group.output_tokens,
                _earliest(found.first_at, group.first_at),
                _latest(found.last_at, group.last_at),
                found.recent_requests + group.recent_answers,
                found.recent_input_tokens + group.recent_input_tokens,
                found.recent_output_tokens + group.recent_output_tokens,
            )
        return found


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def throughput_of(
    batch: BatchSummary, seen: Sent, *, since: datetime, now: datetime
) -> Throughput | None:
    """The batch's rates (see the module); None before its first answer, or for an ended
    batch answered within a second (no span to measure)."""
    if seen.first_at is None or seen.last_at is None:
        return None
    if batch.ended_at is None:
        span_s = (now - max(since, seen.first_at)).total_seconds()
        per_min = 60 / min(max(span_s, MIN_SPAN_S), RECENT_WINDOW_S)
        return Throughput(
            seen.recent_requests * per_min,
            seen.recent_input_tokens * per_min,
            seen.recent_output_tokens * per_min,
            "recent",
        )
    span_s = (seen.last_at - seen.first_at).total_seconds()
    if span_s < 1:
        return None
    per_min = 60 / span_s
    return Throughput(
        seen.answered * per_min,
        seen.input_tokens * per_min,
        seen.output_tokens * per_min,
        "average",
    )
