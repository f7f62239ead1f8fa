"""The batch object: a batch in the shape of Anthropic's ``MessageBatch``, as every command,
the Python API and ``--json`` give it.

:class:`BatchObject` mirrors ``MessageBatch`` field for field (so the official SDK's type
parses it), plus batchrun's own fields: ``name``, ``endpoint``, ``usage``,
``paused_reason`` and ``cache_hit_rate``. Unlike Anthropic's, the counts are live while the
batch runs.

:class:`BatchStatus` is what ``status`` adds: cost, budget, timings, throughput, the most
frequent errors, the tokens per model and how many results were reused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_serializer

from batchrun.config.prices import CacheAccounting, CostTotal
from batchrun.records import (
    BatchStats,
    BatchSummary,
    EndpointHealth,
    EndpointShare,
    Lane,
    ProviderBatchRow,
    cache_hit_rate,
)


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
    # Prompt-cache reads ÷ (reads + writes) over the batch's results; null when neither.
    cache_hit_rate: float | None = None

    @classmethod
    def from_summary(cls, batch: BatchSummary) -> BatchObject:
        return cls(**_summary_fields(batch))


def _summary_fields(batch: BatchSummary) -> dict[str, Any]:
    counts, tokens = batch.counts, batch.tokens
    return {
        "id": batch.id,
        "processing_status": batch.processing_status,
        "request_counts": RequestCountsModel(
            processing=counts.processing,
            succeeded=counts.succeeded,
            errored=counts.errored,
            canceled=counts.canceled,
            expired=counts.expired,
        ),
        "created_at": batch.created_at,
        "expires_at": batch.expires_at,
        "ended_at": batch.ended_at,
        "cancel_initiated_at": batch.cancel_initiated_at,
        "name": batch.name,
        "endpoint": batch.endpoint,
        "usage": UsageTotalsModel(
            input_tokens=tokens.input_tokens,
            output_tokens=tokens.output_tokens,
            cache_creation_input_tokens=tokens.cache_creation_input_tokens,
            cache_read_input_tokens=tokens.cache_read_input_tokens,
        ),
        "paused_reason": batch.paused_reason,
        "cache_hit_rate": cache_hit_rate(
            tokens.cache_read_input_tokens, tokens.cache_creation_input_tokens
        ),
    }


def cost_json(total: CostTotal) -> dict[str, Any]:
    """Cost fields: ``cost_usd`` is null when part of the cost is unknown (a model without a
    price, listed in ``unpriced_models``)."""
    return {
        "cost_usd": None if total.usd is None else round(total.usd, 8),
        "cost_usd_known": round(total.known_usd, 8),
        "unpriced_models": sorted(total.unpriced),
        "cost_usd_by_lane": {lane: round(usd, 8) for lane, usd in sorted(total.by_lane.items())},
        "saved_usd": round(total.saved_usd, 8),
    }


class ThroughputModel(BaseModel):
    requests_per_min: float
    tokens_per_min: float


class ErrorTypeModel(BaseModel):
    type: str
    count: int
    example: str | None


class ModelUsageModel(BaseModel):
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    lane: str = Lane.REALTIME
    cost_factor: float = 1.0


class ProviderBatchModel(BaseModel):
    """One provider batch of the batch lane, as batchrun recorded it."""

    id: int
    provider_id: str | None
    endpoint: str
    state: str
    request_count: int
    provider_status: str | None
    intent_at: datetime
    created_at: datetime | None
    ended_at: datetime | None
    imported_at: datetime | None
    cancel_at: datetime | None
    note: str | None

    @classmethod
    def of(cls, row: ProviderBatchRow) -> ProviderBatchModel:
        return cls(
            id=row.id,
            provider_id=row.provider_id,
            endpoint=row.endpoint,
            state=row.state,
            request_count=row.request_count,
            provider_status=row.status,
            intent_at=row.intent_at,
            created_at=row.created_at,
            ended_at=row.ended_at,
            imported_at=row.imported_at,
            cancel_at=row.cancel_at,
            note=row.note,
        )

    @field_serializer("intent_at", "created_at", "ended_at", "imported_at", "cancel_at")
    def _iso(self, value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()


class EndpointUseModel(BaseModel):
    """One endpoint that answered a batch (or a member of its pool): its results, its share
    of them, its answers in the minute up to the last result, and its state as last
    published by a worker (``ok``, ``open``: out after failures until ``retry_at``,
    ``halted``: out for bad credentials) with the reason."""

    endpoint: str
    answered: int
    share: float
    per_min: int
    state: str | None
    reason: str | None
    retry_at: datetime | None

    @field_serializer("retry_at")
    def _iso(self, value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()


class LaneCacheModel(BaseModel):
    """One lane's prompt-cache tokens and what the reads saved against writing them."""

    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    saved_usd: float


class CacheOverheadModel(BaseModel):
    """What keeping the batch's prompt-cache groups warm cost (batch lane), apart from
    ``cost_usd``: the refresh requests (``failed``: unanswered), for how many groups, their
    cost (``cost_usd`` = ``refresh_cost_usd``); and the priming: what the leaders' 1-hour
    cache writes cost beyond 5-minute ones, shown, but part of the batch's ``cost_usd``
    already (their results price those writes at the 1-hour price). Costs are null for a
    model without a price."""

    requests: int
    failed: int
    groups: int
    refresh_cost_usd: float | None
    priming_cost_usd: float | None
    cost_usd: float | None


class BatchStatus(BatchObject):
    """The batch object with what ``status`` adds: cost, budget, timings, throughput (from the
    first send to the last answer), the most frequent errors and tokens per model."""

    cost_usd: float | None
    cost_usd_known: float
    unpriced_models: list[str]
    # Per lane (realtime, batch) and what the batch discount and reused answers saved.
    cost_usd_by_lane: dict[str, float] = Field(default_factory=dict)
    saved_usd: float = 0.0
    # The batch's lane choice, and its provider batches (the batch lane).
    lane: str = Lane.REALTIME
    provider_batches: list[ProviderBatchModel] = Field(default_factory=list)
    max_cost_usd: float | None
    started_at: datetime | None
    last_completed_at: datetime | None
    throughput: ThroughputModel | None
    errors: list[ErrorTypeModel]
    usage_by_model: list[ModelUsageModel]
    # Who answered (several endpoints: a pool, or a batch moved); empty before any answer.
    endpoints: list[EndpointUseModel] = Field(default_factory=list)
    # Results that are a stored answer (submit --reuse, or a duplicate of the batch).
    reused: int = 0
    # Repair sends answered (structured answers that did not match their schema, shown to the
    # model again) and what they cost (included in cost_usd; None: a model has no price).
    repair_sends: int = 0
    repair_cost_usd: float | None = 0.0
    # The file the requests came from; shown by `status`, not part of the JSON.
    source: str | None = Field(default=None, exclude=True)
    # Queued requests held, unsent, per model: their model has no price and the batch a
    # budget (submit/run --hold-unpriced); a run sends them once the model has a price.
    held_unpriced: dict[str, int] = Field(default_factory=dict)
    # The prompt cache per lane (reads, writes, what the reads saved), and the overhead of
    # the batch lane's cache refreshes (None: it sent none).
    cache_by_lane: dict[str, LaneCacheModel] = Field(default_factory=dict)
    cache_overhead: CacheOverheadModel | None = None

    @classmethod
    def build(
        cls,
        batch: BatchSummary,
        stats: BatchStats,
        cost: CostTotal,
        *,
        members: Sequence[str] = (),
        health: Mapping[str, EndpointHealth] | None = None,
        provider_batches: Sequence[ProviderBatchRow] = (),
        held_unpriced: Mapping[str, int] | None = None,
        repair_cost: CostTotal | None = None,
        cache: CacheAccounting | None = None,
    ) -> BatchStatus:
        """The status of ``batch`` from its stats and what it cost; ``members``: the
        endpoints of its pool (listed even before they answer), ``health``: their states;
        ``held_unpriced``: its held requests per model; ``repair_cost``: what its repair
        sends (``stats.repairs``) cost."""
        rates = throughput_per_min(batch, stats)
        return cls(
            **_summary_fields(batch),
            **cost_json(cost),
            max_cost_usd=stats.max_cost_usd,
            started_at=stats.first_started_at,
            last_completed_at=stats.last_completed_at,
            throughput=None
            if rates is None
            else ThroughputModel(
                requests_per_min=round(rates[0], 3), tokens_per_min=round(rates[1], 3)
            ),
            errors=[
                ErrorTypeModel(type=e.error_type, count=e.count, example=e.example)
                for e in stats.errors
            ],
            usage_by_model=[
                ModelUsageModel(
                    model=u.model,
                    requests=u.requests,
                    input_tokens=u.input_tokens,
                    output_tokens=u.output_tokens,
                    cache_creation_input_tokens=u.cache_creation_input_tokens,
                    cache_read_input_tokens=u.cache_read_input_tokens,
                    lane=u.lane,
                    cost_factor=u.cost_factor,
                )
                for u in stats.usage
            ],
            endpoints=endpoint_uses(stats.endpoints, members, health or {}),
            reused=stats.reused,
            repair_sends=sum(item.requests for item in stats.repairs),
            repair_cost_usd=None if repair_cost is None else repair_cost.usd,
            source=batch.source,
            lane=batch.lane,
            provider_batches=[ProviderBatchModel.of(row) for row in provider_batches],
            held_unpriced=dict(held_unpriced or {}),
            **_cache_fields(cache),
        )

    @field_serializer("started_at", "last_completed_at")
    def _iso(self, value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    @property
    def cost(self) -> CostTotal:
        """The cost as a sum: what could be priced, and the models that could not."""
        return CostTotal(
            self.cost_usd_known,
            dict.fromkeys(self.unpriced_models, 1),
            dict(self.cost_usd_by_lane),
            self.cost_usd_known + self.saved_usd,
        )


def _cache_fields(cache: CacheAccounting | None) -> dict[str, Any]:
    if cache is None:
        return {}
    overhead = None
    if cache.refreshed_groups:
        overhead = CacheOverheadModel(
            requests=cache.refreshes,
            failed=cache.refreshes_failed,
            groups=cache.refreshed_groups,
            refresh_cost_usd=_usd(cache.refresh_usd),
            priming_cost_usd=_usd(cache.priming_usd),
            cost_usd=_usd(cache.overhead_usd),
        )
    return {
        "cache_by_lane": {
            lane: LaneCacheModel(
                cache_read_input_tokens=item.cache_read_input_tokens,
                cache_creation_input_tokens=item.cache_creation_input_tokens,
                saved_usd=round(item.saved_usd, 8),
            )
            for lane, item in cache.by_lane.items()
        },
        "cache_overhead": overhead,
    }


def _usd(value: float | None) -> float | None:
    return None if value is None else round(value, 8)


def throughput_per_min(batch: BatchSummary, stats: BatchStats) -> tuple[float, float] | None:
    """(requests, tokens) per minute from the first send to the last answer, or None before
    there is a span to measure."""
    if stats.first_started_at is None or stats.last_completed_at is None:
        return None
    span_s = (stats.last_completed_at - stats.first_started_at).total_seconds()
    answered = batch.counts.succeeded + batch.counts.errored
    if span_s < 1 or answered == 0:
        return None
    tokens = batch.tokens.input_tokens + batch.tokens.output_tokens
    return answered * 60 / span_s, tokens * 60 / span_s


def batch_objects(batches: Sequence[BatchSummary]) -> list[BatchObject]:
    """The batch objects of ``batches``, in their order."""
    return [BatchObject.from_summary(batch) for batch in batches]


def endpoint_uses(
    shares: Sequence[EndpointShare], members: Sequence[str], health: Mapping[str, EndpointHealth]
) -> list[EndpointUseModel]:
    """Each endpoint that answered, then each pool member that did not, with its state."""
    answered = {share.endpoint: share for share in shares}
    names = list(answered) + [name for name in members if name not in answered]
    total = sum(share.answered for share in shares) or 1
    found = []
    for name in names:
        share = answered.get(name, EndpointShare(name, 0, 0))
        state = health.get(name)
        retry_at = None
        if state is not None and state.state == "open" and state.until is not None:
            retry_at = datetime.fromtimestamp(state.until, UTC)
        found.append(
            EndpointUseModel(
                endpoint=name,
                answered=share.answered,
                share=round(share.answered / total, 4),
                per_min=share.recent,
                state=None if state is None else ("ok" if state.state == "closed" else state.state),
                reason=None if state is None else state.reason,
                retry_at=retry_at,
            )
        )
    return found
