"""Plain values that cross layers, so no layer needs another's internals.

- A request's way through the store: :class:`NewBatch` and :class:`NewRequest` in,
  :class:`ClaimedRequest` out to a worker, :class:`FinishedRequest` and :class:`RetryLater`
  back; batches and results as ``status``, ``list`` and the exports read them.
- An answer's way across the transport seam: an :data:`Outcome` (:class:`Succeeded`,
  :class:`Retryable`, :class:`Fatal` or :class:`Halt`), with the :class:`Usage` and the
  :class:`ServerLimits` it reported. Errors cross as values, never as exceptions.
- The lanes a batch's requests can take, named once: :class:`Lane`.

Frozen dataclasses only; this module imports nothing of batchrun's.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

ErrorBody = dict[str, Any]
# A batch's repair sends per request at most, unless its submit says otherwise (``repair = N``).
DEFAULT_REPAIR_LIMIT = 1
HaltKind = Literal["authentication", "permission", "billing", "spend_limit"]

# -- answers: what the transport hands the dispatcher -----------------------------------------


@dataclass(frozen=True)
class ServerLimits:
    """The limits, remaining capacity and reset times a response announced, per dimension."""

    limits: dict[str, float] = field(default_factory=dict)
    remaining: dict[str, float] = field(default_factory=dict)
    reset_at: dict[str, datetime] = field(default_factory=dict)

    def exhausted(self) -> set[str]:
        """Dimensions with nothing left."""
        return {dim for dim, left in self.remaining.items() if left <= 0}

    def wait_s(self, now: datetime) -> float | None:
        """Seconds until the exhausted limits (else all announced ones) reset, if announced."""
        dims = self.exhausted() or set(self.reset_at)
        waits = [(self.reset_at[d] - now).total_seconds() for d in dims if d in self.reset_at]
        return max(min(waits), 0.0) if waits else None


@dataclass(frozen=True)
class Usage:
    """Token usage of one response, as the API reports it."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # The part of ``cache_creation_input_tokens`` written to the 1-hour cache (the usage's
    # ``cache_creation.ephemeral_1h_input_tokens``), priced at the 1-hour write price.
    cache_creation_1h_input_tokens: int = 0


@dataclass(frozen=True)
class Succeeded:
    """A 200 with a Message. ``body`` is the Message as stored and exported: the response
    text as received, or the Message made from it (another API's shape, usage clamped), in
    which case ``raw_body`` keeps what the server actually sent."""

    body: str
    model: str | None
    stop_reason: str | None
    usage: Usage
    request_id: str | None
    server_limits: ServerLimits | None = None
    raw_body: str | None = None


@dataclass(frozen=True)
class Retryable:
    """A transient failure. ``error`` is what the result carries if no attempt is left."""

    reason: str
    error: ErrorBody
    http_status: int | None = None
    retry_after_s: float | None = None
    server_limits: ServerLimits | None = None
    # The limits a 429's message names as exceeded (dimension names), e.g. {"itpm"}.
    limits_named: frozenset[str] = frozenset()
    # A failure worth one more try at most (a 200 whose body is cut or not JSON).
    at_most_once: bool = False
    # What the server sent, when it is kept with the result should no attempt be left.
    raw_body: str | None = None
    # A 200 whose body is not a Message: the endpoint's failure (a pool's breaker counts it).
    unreadable: bool = False

    @property
    def rate_limited(self) -> bool:
        """A 429: the server asks us to slow down; not a failure of the request."""
        return self.http_status == 429


@dataclass(frozen=True)
class Fatal:
    """A final failure of this request alone (a bad request, an unknown model, an answer
    that cannot be a Message). ``raw_body`` keeps what the server sent when it is not the
    error object itself."""

    error: ErrorBody
    http_status: int
    raw_body: str | None = None
    # A 200 whose body is not a Message: the endpoint's failure as much as the request's (a
    # pool's breaker counts it, and another member may be asked once).
    unreadable: bool = False


@dataclass(frozen=True)
class Halt:
    """A failure every request of the batch would share: stop the batch, keep its queue."""

    kind: HaltKind
    http_status: int
    detail: str


Outcome = Succeeded | Retryable | Fatal | Halt


def error_body(error_type: str, message: str, request_id: str | None = None) -> ErrorBody:
    """An Anthropic-shaped error response: ``{"type": "error", "error": {...}, ...}``."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


# -- batches, requests and results: what crosses the store boundary -------------------------

ProcessingStatus = Literal["in_progress", "canceling", "ended"]


class Lane(StrEnum):
    """The ways a batch's requests reach the provider (``--lane``), named once.

    A member is its value: stored, exported and printed as the plain string
    (``json.dumps(Lane.REALTIME)`` is ``"realtime"``), and equal to that string as read back
    from the database. A request is sent on ``REALTIME`` or ``BATCH``; a batch chooses among
    all three.
    """

    REALTIME = "realtime"
    """The Messages API, one request at a time: the dispatcher sends it."""
    BATCH = "batch"
    """The endpoint's server-side batch API (half price, results within hours): the batch
    lane (:mod:`batchrun.batch_lane`) sends it in a provider batch."""
    AUTO = "auto"
    """A batch's choice made per run: the batch lane while its deadline leaves time for a
    provider batch, else real time (:mod:`batchrun.batch_lane.auto`)."""


class CacheTtl(StrEnum):
    """The cache TTL policy of a batch's prompt-cache groups (``--cache-ttl``, config
    ``cache_ttl``); it applies to groups whose followers go to the batch lane."""

    AUTO = "auto"
    """The group's breakpoints (the leader's request and the followers') carry ``"ttl":
    "1h"``, so the leader's cache write outlives the provider's wait (one 2× write per group
    instead of a 1.25× write per request; see "Paying less" in the docs)."""
    KEEP = "keep"
    """The requests are sent as written."""


@dataclass(frozen=True)
class CacheGroupWarmth:
    """A prompt-cache group whose followers a provider batch holds: its leader (whose params
    a refresh sends) and when its cache entry was last written or read."""

    batch_id: str
    leader_id: int
    model: str
    params_json: str
    warm_since: datetime
    refreshes: int = 0
    # The leader's 1-hour cache write, in tokens, and whether the group has its row already.
    leader_write_tokens: int = 0
    tracked: bool = False
    # The last refresh that read or wrote the entry, as stored (None: none yet).
    warmed_at: datetime | None = None


@dataclass(frozen=True)
class CacheRefreshModel:
    """The refresh requests of one model's groups in a batch, and their tokens."""

    model: str
    groups: int
    refreshes: int
    failed: int
    usage: Usage
    # The leaders' 1-hour cache writes (their results price them at the 1-hour price).
    leader_write_1h_tokens: int = 0


@dataclass(frozen=True)
class CacheRefreshTotals:
    """What keeping a batch's prompt-cache groups warm took, per model (the overhead of the
    batch lane's cache; see batchrun.batch_lane.warmth)."""

    models: tuple[CacheRefreshModel, ...] = ()

    @property
    def refreshes(self) -> int:
        """Refresh requests sent in all."""
        return sum(m.refreshes for m in self.models)


@dataclass(frozen=True)
class NewBatch:
    """A batch about to be stored."""

    id: str
    name: str | None
    endpoint: str
    source: str | None
    created_at: datetime
    expires_at: datetime
    # The budget in USD, stored in the same transaction as the batch (None: no budget).
    max_cost_usd: float | None = None
    # A Lane: realtime, batch (the provider's batch API) or auto (see batchrun.batch_lane).
    lane: str = Lane.REALTIME
    # submit --reuse: answer requests whose params already succeeded in this database from
    # the stored answer, and send identical params within the batch once.
    reuse: bool = False
    # The id of the `batchrun serve` key that created it (None: made outside the server).
    owner: str | None = None
    # Repair sends per request at most for an answer that does not match its schema
    # (batchrun.structured.repair); 0: none.
    repair_limit: int = DEFAULT_REPAIR_LIMIT
    # A CacheTtl: with "auto", the prompt-cache groups of the batch lane use the 1-hour TTL.
    cache_ttl: str = CacheTtl.AUTO


# Invalid lines kept by `submit --skip-invalid` that have no usable custom_id of their own
# (missing, invalid or a duplicate) are named after their line: line-17.
PLACEHOLDER_PREFIX = "line-"
# The stored error type of an invalid line kept by `submit --skip-invalid`, apart from the API's
# errors (its Anthropic-format result keeps the API's invalid_request_error). Nothing of such a
# line can be sent, so retrying a batch's errored requests leaves it as it is.
INVALID_INPUT_ERROR_TYPE = "invalid_input"


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
    # SHA-256 of the params as canonical JSON (batchrun.input.digests), for submit --reuse.
    params_digest: str | None = None
    # The key of its cached prompt prefix (None: no cache_control breakpoint): requests of
    # the batch with the same key form a prompt-cache group.
    cache_prefix: str | None = None
    # The table row it was rendered from (``submit --template``), as a JSON object: kept with
    # the batch so results can be joined to their rows without the file.
    input_row: str | None = None


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
    # The latest transient failure, as recorded with the retry (None: none yet).
    last_error: str | None = None
    # Its answers that did not match its schema so far: above 0, the next send is a repair
    # (batchrun.structured.repair) of the latest of them.
    repairs: int = 0


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
    # What the server sent, when ``body`` is not it (normalised, clamped or refused).
    raw_body: str | None = None
    # The endpoint that answered (for a batch sent through a pool: the member).
    endpoint: str | None = None
    # Lane.BATCH when a provider batch answered it (None: real time), and the share of the list
    # price that lane bills (None: all of it).
    lane: str | None = None
    cost_factor: float | None = None
    # When the final attempt was sent (None: not sent from here, e.g. a provider batch's).
    sent_at: datetime | None = None
    # The final attempt was a repair send (a follow-up to an answer that did not match its
    # schema): counted with the batch's repairs too.
    repair_send: bool = False


@dataclass(frozen=True)
class AnswerTurn:
    """An answer that did not match its schema, with a repair left: kept in the request's
    history (``answer_turns``), its usage counted, the request back to the real-time queue
    for the repair send. ``turn`` is 1 for the request's first such answer; ``repair_send``
    says whether it answered a repair send itself."""

    request_id: int
    batch_id: str
    turn: int
    repair_send: bool
    body: str
    errors: tuple[str, ...]
    completed_at: datetime
    model: str | None = None
    usage: Usage | None = None
    endpoint: str | None = None
    lane: str | None = None
    cost_factor: float | None = None
    sent_at: datetime | None = None
    latency_ms: int | None = None


@dataclass(frozen=True)
class SendFailure:
    """One send that failed transiently and went back to the queue (what the report's 429,
    retry and latency charts count): when it was sent, to which endpoint (a pool's member),
    how long the answer took, its HTTP status (None: no answer, a transport failure) and the
    error type it carried."""

    batch_id: str
    sent_at: datetime
    latency_ms: int | None
    endpoint: str | None
    http_status: int | None
    error_type: str | None


@dataclass(frozen=True)
class RetryLater:
    """A request going back to the queue until ``not_before``; ``failed`` records the send
    that failed (None where no send is to be recorded)."""

    request_id: int
    not_before: datetime
    failures: int
    last_error: str | None
    failed: SendFailure | None = None


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


def cache_hit_rate(read_tokens: int | None, write_tokens: int | None) -> float | None:
    """Prompt-cache reads ÷ (reads + writes), rounded to 4 places; None when both are 0 (or
    unknown): nothing was cached."""
    read, write = read_tokens or 0, write_tokens or 0
    return None if read + write == 0 else round(read / (read + write), 4)


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
    # A Lane: realtime, batch or auto (batchrun.batch_lane).
    lane: str = Lane.REALTIME
    # The id of the `batchrun serve` key that created it (None: made outside the server).
    owner: str | None = None

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


@dataclass(frozen=True)
class ModelTokens:
    """Token totals of one model, for pricing."""

    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # Where these were answered (realtime or batch), and the share of the list price paid
    # there (the batch discount; 0 for answers reused from the database).
    lane: str = Lane.REALTIME
    cost_factor: float = 1.0
    # The part of ``cache_creation_input_tokens`` written to the 1-hour cache.
    cache_creation_1h_input_tokens: int = 0


@dataclass(frozen=True)
class ErrorCount:
    """One error type of a batch's errored results, how often it occurred, and the message
    of one of them."""

    error_type: str
    count: int
    example: str | None


@dataclass(frozen=True)
class EndpointHealth:
    """An endpoint's state as a worker last published it (``batchrun.dispatch.routing``):
    closed (in rotation), open (out after failures, probed again at ``until``) or halted
    (bad credentials); times in Unix seconds."""

    endpoint: str
    state: str
    reason: str | None
    until: float | None
    updated_at: float


@dataclass(frozen=True)
class EndpointShare:
    """How many of a batch's results an endpoint answered, and how many lately."""

    endpoint: str
    answered: int
    recent: int


@dataclass(frozen=True)
class BatchStats:
    """What ``status`` adds to a batch's counts: tokens per model (for cost), when the first
    request was sent and the last result came, the most frequent errors, and the budget."""

    usage: Sequence[ModelTokens]
    first_started_at: datetime | None
    last_completed_at: datetime | None
    errors: Sequence[ErrorCount]
    max_cost_usd: float | None
    # Who answered: each endpoint's results, and those of the minute up to the last one.
    endpoints: Sequence[EndpointShare] = ()
    # Results that are a stored answer (submit --reuse, or a duplicate's original): not sent.
    reused: int = 0
    # Repair sends answered (answers that did not match their schema shown to the model
    # again), by model, lane and price share: ``requests`` counts the sends.
    repairs: Sequence[ModelTokens] = ()


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
    # What the server sent, when the stored Message is not it (normalised, clamped, refused).
    raw_body: str | None = None
    # The endpoint that answered (for a pool: the member).
    endpoint: str | None = None
    # The batch whose stored answer this is (submit --reuse), None when it was sent.
    reused_from: str | None = None
    # The share of the list price paid (0 when reused); None is 1.
    cost_factor: float | None = None
    # Where it was answered: realtime, or batch (a provider batch); None before lanes.
    lane: str | None = None
    # The request's earlier answers that did not match its schema (``answer_turns``), paid
    # and repaired since: their tokens per model, lane and share of the list price
    # (``requests``: those that reported usage). Empty without repairs.
    turns: tuple[ModelTokens, ...] = ()
    # Repair sends answered for the request, as the batch's repair counters count them (its
    # turns that answered one, and its result when it answered one).
    repair_sends: int = 0
    # The part of ``cache_creation_input_tokens`` written to the 1-hour cache; None when the
    # result was stored before it was kept (priced at the 5-minute price, as then).
    cache_creation_1h_input_tokens: int | None = None


# -- pools: several endpoints used as one ([pools.NAME] in the config file) -----------------
#
# A batch submitted to a pool is stored with the pool's name; a run sends each of its requests
# to one member, each member under its own limits (``batchrun.dispatch.routing`` says which,
# and takes a failing member out of rotation). A member may name models differently (a
# gateway's ``vendor/claude-sonnet-4.5`` for ``claude-sonnet-4-5``): its ``models`` map
# rewrites the request's model for that member, whose limits are looked up under that name.

DEFAULT_WEIGHT = 1.0


@dataclass(frozen=True)
class PoolMember:
    """One endpoint of a pool: its name, its weight (its share counts this many times its
    limits), and the model names it uses instead of the request's."""

    endpoint: str
    weight: float = DEFAULT_WEIGHT
    models: Mapping[str, str] = field(default_factory=dict)

    def model_for(self, model: str) -> str:
        """The model name this member is sent for a request of ``model``."""
        return self.models.get(model, model)


@dataclass(frozen=True)
class Pool:
    """Endpoints used as one, under the pool's name."""

    name: str
    members: tuple[PoolMember, ...]
    # Where the definition came from (the config file).
    source: str = ""

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        return tuple(member.endpoint for member in self.members)


def route_of(name: str, pools: Mapping[str, Pool]) -> Pool:
    """The pool called ``name``, or a pool of the one endpoint of that name."""
    return pools.get(name) or Pool(name, (PoolMember(name),))


# -- the batch lane (provider batches) -------------------------------------------------------


@dataclass(frozen=True)
class ProviderIntent:
    """Requests just taken into a provider batch that is about to be created: the intent
    row's id, and each request's line of the create body (``{"custom_id", "params"}``)."""

    row_id: int
    batch_id: str
    endpoint: str
    lines: list[bytes]
    body_bytes: int


@dataclass(frozen=True)
class BudgetStop:
    """No provider batch was made: the next ready request's worst case (``next_usd``) is
    more than the budget leaves."""

    next_usd: float


@dataclass(frozen=True)
class ProviderBatchRow:
    """A provider batch as batchrun recorded it (see ``store.tables.provider_batches``)."""

    id: int
    batch_id: str
    endpoint: str
    state: str
    provider_id: str | None
    request_count: int
    body_bytes: int
    intent_at: datetime
    created_at: datetime | None = None
    ended_at: datetime | None = None
    imported_at: datetime | None = None
    cancel_at: datetime | None = None
    cancel_sent_at: datetime | None = None
    next_poll_at: datetime | None = None
    polls: int = 0
    poll_failures: int = 0
    status: str | None = None
    counts: str | None = None
    results_url: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Requeue:
    """A provider batch's request going back to the queue, in the real-time lane (the
    provider expired it, failed it transiently, or canceled it at the auto lane's cut-off)."""

    custom_id: str
    reason: str


@dataclass(frozen=True)
class ImportedResult:
    """A provider batch's final answer for one request (``request_id`` and ``batch_id`` are
    filled in by the store from the custom_id)."""

    custom_id: str
    result: FinishedRequest


@dataclass(frozen=True)
class ImportTally:
    """What an import chunk did: results stored, requests requeued, lines matching no request
    the provider batch holds (already imported, or unknown)."""

    stored: int = 0
    requeued: int = 0
    unmatched: int = 0

    def __add__(self, other: ImportTally) -> ImportTally:
        return ImportTally(
            self.stored + other.stored,
            self.requeued + other.requeued,
            self.unmatched + other.unmatched,
        )
