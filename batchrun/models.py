"""Wire types at the edges: the batch object that ``status --json`` and ``list --json`` print.

It mirrors Anthropic's ``MessageBatch`` field for field (so the official SDK's type parses
it), plus batchrun's own fields: ``name``, ``endpoint``, ``usage`` and ``paused_reason``.
Unlike Anthropic's, the counts are live while the batch runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from batchrun.records import BatchSummary


class RequestCountsModel(BaseModel):
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class UsageTotalsModel(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


class BatchObject(BaseModel):
    """A batch in the shape of Anthropic's MessageBatch, with batchrun's additions."""

    id: str
    type: Literal["message_batch"] = "message_batch"
    processing_status: Literal["in_progress", "canceling", "ended"]
    request_counts: RequestCountsModel
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    cancel_initiated_at: datetime | None
    archived_at: datetime | None = None
    results_url: str | None = None
    name: str | None
    endpoint: str
    usage: UsageTotalsModel
    paused_reason: str | None

    @classmethod
    def from_summary(cls, batch: BatchSummary) -> BatchObject:
        counts, tokens = batch.counts, batch.tokens
        return cls(
            id=batch.id,
            processing_status=batch.processing_status,
            request_counts=RequestCountsModel(
                processing=counts.processing,
                succeeded=counts.succeeded,
                errored=counts.errored,
                canceled=counts.canceled,
                expired=counts.expired,
            ),
            created_at=batch.created_at,
            expires_at=batch.expires_at,
            ended_at=batch.ended_at,
            cancel_initiated_at=batch.cancel_initiated_at,
            name=batch.name,
            endpoint=batch.endpoint,
            usage=UsageTotalsModel(
                input_tokens=tokens.input_tokens,
                output_tokens=tokens.output_tokens,
                cache_creation_input_tokens=tokens.cache_creation_input_tokens,
                cache_read_input_tokens=tokens.cache_read_input_tokens,
            ),
            paused_reason=batch.paused_reason,
        )
