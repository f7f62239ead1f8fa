"""Plain values for status, budgets and analytics exports that cross the store boundary.

They complement ``batchrun.records``: richer views of a batch (token totals per model,
timings, frequent errors) and of each result (everything a flat export needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from batchrun.pricing import ModelTokens


@dataclass(frozen=True)
class ErrorCount:
    """One error type of a batch's errored results, how often it occurred, and the message
    of one of them."""

    error_type: str
    count: int
    example: str | None


@dataclass(frozen=True)
class BatchStats:
    """What ``status`` adds to a batch's counts: tokens per model (for cost), when the first
    request was sent and the last result came, the most frequent errors, and the budget."""

    usage: Sequence[ModelTokens]
    first_started_at: datetime | None
    last_completed_at: datetime | None
    errors: Sequence[ErrorCount]
    max_cost_usd: float | None


@dataclass(frozen=True)
class ResultDetail:
    """One finished request with everything a flat export shows."""

    batch_id: str
    custom_id: str
    line_no: int
    state: str
    model: str | None
    stop_reason: str | None
    body: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_creation_input_tokens: int | None
    cache_read_input_tokens: int | None
    attempts: int
    latency_ms: int | None
    http_status: int | None
    request_ref: str | None
    error_type: str | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
