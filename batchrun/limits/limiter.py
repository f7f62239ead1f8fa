"""Pacing sends per endpoint × model (or model family): RPM, TPM, ITPM and OTPM buckets that
learn.

Each request is paced under a limiter key: ``(endpoint, model)``, or ``(endpoint, pattern)``
for a model that an endpoint's family pattern covers (:mod:`batchrun.limits.families`), so
that every model of the family draws from one set of buckets. For every key the limiter keeps
one continuously refilling bucket per limit in force (:mod:`batchrun.limits.buckets`), all
starting empty, so sends are paced at the refill rate from the first request. A request waits
its turn (first come, first served), reserves what it may cost in every bucket, and after the
response the reservation is corrected with the real ``usage`` (reserve, then reconcile):

- requests: 1;
- input tokens (ITPM): the calibrated input estimate; corrected to ``input_tokens +
  cache_creation_input_tokens`` (cache reads do not count, as with Anthropic's ITPM);
- output tokens (OTPM): ``max_tokens`` or a learned estimate (``output_reservation``);
  corrected to ``output_tokens``;
- tokens (TPM, input + output together, as Langdock counts): the sum of the two.

A worker does not visit the bank per request: it takes a key's capacity in blocks sized to
its recent sending, reserved in debt, and spends them request by request, each request
waiting once for the moment its part is paid (:mod:`batchrun.limits.blocks` has the rules
and the bound by which a cluster may exceed a limit). What it does not spend it gives back.

What the answers teach goes to the key's record in the bank (:mod:`batchrun.limits.keyrecord`
has the rules): the limits the server announces in ``anthropic-ratelimit-*-limit`` headers, a
lower limit learned from 429s that creeps back up, a pause for a 429's whole ``retry-after``
(a 529's own exponential back-off), and what the server let through. With the database bank,
every worker of the database shares that record, so they learn one limit together. The start
of a key ramps up to its limits over a few seconds. Time is the event loop's (or the bank's
clock, which advances with it); tests run in virtual time.

**Limits across all the models of an endpoint** (a gateway key's RPM, a workspace-wide cap:
``endpoint_limits``, and the run's ``--endpoint-*`` flags) are one more key per endpoint,
``(endpoint, ALL_MODELS)``, with buckets of its own in the same bank (so several workers share
it as they share the others). A request first takes from its model's (or family's) buckets,
then from the endpoint's: it goes when both have granted, and its answer corrects both
reservations. Waiting for the endpoint's buckets holds what the model's granted (never more
than its limit), not the reverse, so a paused model never holds capacity every other model
needs. What 429s, pauses and headers teach stays with the model's key: a server says which
model it refused, not which of batchrun's scopes.

What stays with each worker: the input calibration, the output estimate and the average
request of each key, the back-off counts, and why it paused a key (for progress).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from batchrun.limits.banks import Bank, LocalBank
from batchrun.limits.blocks import Block, block_costs, held_requests
from batchrun.limits.buckets import DEFAULT_BURST_S
from batchrun.limits.dimensions import DIMENSIONS, Amounts, RateLimits
from batchrun.limits.families import ALL_MODELS, ANY_MODEL, entry_for, is_family
from batchrun.limits.keyrecord import RAMP_S, START_PER_MIN, KeyPolicy, PendingChanges
from batchrun.limits.learning import InputCalibration, OutputEstimate, TypicalRequest
from batchrun.limits.windows import FixedWindows
from batchrun.records import Fatal, Halt, Outcome, Retryable, ServerLimits, Succeeded

log = logging.getLogger(__name__)

LimitKey = tuple[str, str]
"""(endpoint name, model or family pattern)."""
OutputReservation = Literal["learned", "max_tokens"]

# A 429 without retry-after (nor reset headers) for a key with no limit in force at all (no
# start rate either) pauses this long, doubling while they repeat. With a limit in force it
# waits a slot at that limit instead (see keyrecord), or for a fixed window to reopen.
DEFAULT_429_PAUSE_S = 1.0
MAX_DEFAULT_429_PAUSE_S = 30.0
# 529 overloaded: pause 1 s, 2 s, 4 s ... per endpoint × model while they repeat.
OVERLOAD_PAUSE_S = 1.0
MAX_OVERLOAD_PAUSE_S = 30.0
# A pause this long is said in the log and in progress, with its reason.
LONG_PAUSE_S = 60.0
# A 429 for a token limit while the answers' real usage of it was below this share of the
# limit: the server counts something else, max_tokens up front (see _learn_charging).
CHARGED_UP_FRONT_SHARE = 0.7
# The output-token dimensions a server charging max_tokens up front counts them in.
_OUTPUT_DIMENSIONS = frozenset({"tpm", "otpm"})


@dataclass(frozen=True)
class LimiterSettings:
    """How the limiter reserves, bursts and starts: ``ramp_s`` seconds from a fifth of the
    limits to all of them after a key's first answer (0: no ramp); ``start_per_min``, the
    requests' rate a key with no limit known starts at and grows from (None: unpaced until
    a 429)."""

    burst_s: float = DEFAULT_BURST_S
    output_reservation: OutputReservation = "learned"
    ramp_s: float = RAMP_S
    start_per_min: float | None = START_PER_MIN


@dataclass(frozen=True)
class Demand:
    """What a request may cost: its raw input estimate and its max_tokens."""

    raw_input_tokens: int
    max_tokens: int


@dataclass
class Permit:
    """A granted turn: what was reserved, to be reconciled by :meth:`Limiter.settle`."""

    key: LimitKey
    demand: Demand
    input_estimate: int
    reserved: dict[str, float]
    # What the reservation stands for, whichever limits are in force.
    amounts: Amounts = field(default_factory=Amounts)
    # What was reserved from the endpoint's limits across all its models, if it has any.
    endpoint_key: LimitKey | None = None
    endpoint_reserved: dict[str, float] = field(default_factory=dict)
    # When the model's buckets granted it, on the bank's clock (None: not known).
    taken_at: float | None = None


@dataclass(frozen=True)
class Wait:
    """An endpoint × model held back for ``seconds`` more, and why."""

    endpoint: str
    model: str
    seconds: float
    reason: str


@dataclass
class _KeyState:
    """What this worker alone keeps about a key."""

    policy: KeyPolicy
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    consecutive_429s: int = 0
    consecutive_overloads: int = 0
    calibration: InputCalibration = field(default_factory=InputCalibration)
    outputs: OutputEstimate = field(default_factory=OutputEstimate)
    typical: TypicalRequest = field(default_factory=TypicalRequest)
    # The latest pause this worker set, and why: (until, on the bank's clock; reason).
    paused_until: float = -math.inf
    pause_reason: str = ""
    # Capacity taken from the key's buckets and not spent yet (see limits.blocks).
    block: Block | None = None
    # Refusals without retry-after, and the fixed windows they may show.
    windows: FixedWindows = field(default_factory=FixedWindows)
    # The server was seen to charge max_tokens up front: reserve it (see _learn_charging).
    charges_max_tokens: bool = False


class Limiter:
    """Waits until an endpoint × model may send, and learns from the answers."""

    def __init__(
        self,
        limits: Mapping[LimitKey, RateLimits] | None = None,
        *,
        overrides: RateLimits | None = None,
        endpoint_limits: Mapping[str, RateLimits] | None = None,
        endpoint_overrides: RateLimits | None = None,
        settings: LimiterSettings | None = None,
        bank: Bank | None = None,
    ) -> None:
        """``limits`` per (endpoint, entry): an entry is a model, a family pattern such as
        "claude-sonnet-4*" (one limit shared by its models) or "*" (a limit of each other
        model). ``overrides`` (command-line flags) win over them for every key.
        ``endpoint_limits`` per endpoint: limits across all its models, which every request
        takes from as well; ``endpoint_overrides`` (flags) win over them for every endpoint.
        ``bank`` holds the keys' records: this worker's memory by default, or the database
        when several workers share the limits."""
        self._limits = dict(limits or {})
        self._overrides = overrides or RateLimits()
        self._endpoint_limits = dict(endpoint_limits or {})
        self._endpoint_overrides = endpoint_overrides or RateLimits()
        self._settings = settings or LimiterSettings()
        self._bank: Bank = bank or LocalBank()
        self._states: dict[LimitKey, _KeyState] = {}
        self._entries: dict[str, list[str]] = {}
        for endpoint, entry in self._limits:
            self._entries.setdefault(endpoint, []).append(entry)
        self._keys: dict[tuple[str, str], LimitKey] = {}

    @property
    def burst_s(self) -> float:
        """The buckets' size, in seconds of their limit."""
        return self._settings.burst_s

    def key_for(self, endpoint: str, model: str) -> LimitKey:
        """The limiter key of a model at an endpoint: ``(endpoint, pattern)`` when one of the
        endpoint's family patterns covers it (and no entry names it), else ``(endpoint,
        model)``. A key maps to itself, and so does an endpoint's key across all its models,
        ``(endpoint, ALL_MODELS)``."""
        key = self._keys.get((endpoint, model))
        if key is None and model == ALL_MODELS:
            key = self._keys[(endpoint, model)] = (endpoint, model)
        if key is None:
            entry = entry_for(model, self._entries.get(endpoint, ()))
            key = (endpoint, entry) if entry is not None and is_family(entry) else (endpoint, model)
            self._keys[(endpoint, model)] = key
        return key

    def limits_for(self, key: LimitKey) -> RateLimits:
        """The configured limits of a key (of the family it falls under, if any; for
        ``(endpoint, ALL_MODELS)``, the endpoint's across all its models)."""
        endpoint, entry = self.key_for(*key)
        if entry == ALL_MODELS:
            own = self._endpoint_limits.get(endpoint) or RateLimits()
            return self._endpoint_overrides.merged_over(own)
        base = (
            self._limits.get((endpoint, entry))
            or self._limits.get((endpoint, ANY_MODEL))
            or RateLimits()
        )
        return self._overrides.merged_over(base)

    def limit_in_force(self, key: LimitKey, dimension: str) -> float | None:
        """The per-minute limit currently applied to a dimension of a key."""
        key = self.key_for(*key)
        return self._limits_now(key, self._state(key)).get(dimension)

    def endpoint_key(self, endpoint: str) -> LimitKey | None:
        """The key of ``endpoint``'s limits across all its models, or None when it has
        none configured."""
        key = (endpoint, ALL_MODELS)
        return key if self.limits_for(key) else None

    def input_estimate(self, key: LimitKey, raw_input_tokens: int) -> int:
        """The calibrated input estimate for a key."""
        return self._state(self.key_for(*key)).calibration.estimate(raw_input_tokens)

    def request_rate_per_s(self, endpoint: str, model: str) -> float | None:
        """Requests a second the limits in force for this key allow, at the average cost of
        its requests (what answers used; before any, what requests reserved; before any
        request, 1,000 input and 500 output tokens); None when no limit is in force. The
        endpoint's limits across all its models count as if this key had them alone. The
        steady rate: without the start-up ramp or a pause (see :meth:`paused_for_s`)."""
        key = self.key_for(endpoint, model)
        state = self._state(key)
        typical = state.typical.amounts()
        in_force = [self._limits_now(key, state)]
        if (wide := self.endpoint_key(endpoint)) is not None:
            in_force.append(self._limits_now(wide, self._state(wide)))
        rates = [
            limit / 60.0 / cost
            for limits in in_force
            for dimension, limit in limits.items()
            if (cost := DIMENSIONS.get(dimension).measure(typical)) > 0
        ]
        return min(rates) if rates else None

    def paused_for_s(self, endpoint: str, model: str) -> float:
        """Seconds this key is held back now by a pause (a 429's retry-after, a 529's
        back-off; with the database bank, one another worker set, as of this worker's
        latest take); 0 if not."""
        key = self.key_for(endpoint, model)
        until = self._state(key).paused_until
        if (record := self._bank.record(key)) is not None:
            until = max(until, record.paused_until)
        return max(until - self._bank.now(), 0.0)

    def _state(self, key: LimitKey) -> _KeyState:
        state = self._states.get(key)
        if state is None:
            # An endpoint with limits across all its models has known limits: its models'
            # keys need not find theirs from the start rate (a 429 still teaches them).
            wide = key[1] != ALL_MODELS and self.endpoint_key(key[0]) is not None
            policy = KeyPolicy(
                configured=self.limits_for(key),
                burst_s=self._settings.burst_s,
                ramp_s=self._settings.ramp_s,
                start_per_min=None if wide else self._settings.start_per_min,
            )
            state = self._states[key] = _KeyState(policy)
        return state

    def _limits_now(self, key: LimitKey, state: _KeyState) -> dict[str, float]:
        record = self._bank.record(key)
        if record is None:
            return dict(state.policy.configured.items())
        return record.limits(state.policy.configured, self._bank.now())

    # -- before a send ----------------------------------------------------------------------

    async def acquire(self, key: LimitKey, demand: Demand) -> Permit:
        """Wait for this key's turn (``key``: endpoint and model; a family's models share
        one), then reserve what the request may cost; then the same from the endpoint's
        limits across all its models, if it has any. The permit carries the limiter key.

        Capacity comes from the worker's block for the key (:mod:`batchrun.limits.blocks`):
        the bank is asked only when the block cannot cover the request, and then for a new
        block, reserved in debt; the request then waits once, until its part is paid."""
        key = self.key_for(*key)
        state = self._state(key)

        def estimate() -> tuple[Amounts, dict[str, float]]:
            # Worked out when the request's turn comes: the estimates learn meanwhile.
            input_estimate = state.calibration.estimate(demand.raw_input_tokens)
            amounts = Amounts(1.0, float(input_estimate), float(self._output(state, demand)))
            return amounts, DIMENSIONS.measure_all(amounts)

        amounts, reserved = await self._reserve(key, state, estimate)
        state.typical.reserved(amounts)
        input_estimate = int(amounts.input_tokens)
        permit = Permit(key, demand, input_estimate, reserved, amounts)
        permit.taken_at = self._bank.now()
        if (wide := self.endpoint_key(key[0])) is None:
            return permit
        costs = DIMENSIONS.measure_all(amounts)
        try:
            _, permit.endpoint_reserved = await self._reserve(
                wide, self._state(wide), lambda: (amounts, costs)
            )
        except BaseException:
            # Stopped while waiting (a batch stopped, a shutdown): give the model's back.
            changes = PendingChanges()
            self._correct(permit, {}, changes)
            self._bank.update(key, changes, state.policy)
            raise
        permit.endpoint_key = wide
        return permit

    async def _reserve(
        self,
        key: LimitKey,
        state: _KeyState,
        estimate: Callable[[], tuple[Amounts, dict[str, float]]],
    ) -> tuple[Amounts, dict[str, float]]:
        """Spend what ``estimate`` says the request may cost from the key's block once paid
        (first come, first served among this worker's requests), taking a new block when it
        cannot cover it; returns the estimate and what was spent per dimension in force."""
        block = state.block
        if block is not None and not state.lock.locked():
            now = self._bank.now()
            amounts, costs = estimate()
            if (
                now < block.expires_at
                and block.covers(costs)
                and block.wait_s(costs, now) <= 0
                and not self._paused(key, state, now)
            ):
                return amounts, block.spend(costs, now)
        async with state.lock:
            while True:
                now = self._bank.now()
                amounts, costs = estimate()
                block = state.block
                found: Block | float | None = block
                if (
                    block is None
                    or now >= block.expires_at
                    or not block.covers(costs)
                    or self._paused(key, state, now)
                ):
                    # Paused, the bank still hears of it at once: the take writes the pause
                    # (and what else was learned) for the other workers, and takes nothing.
                    found = await self._take_block(key, state, costs, now)
                if not isinstance(found, Block):
                    # Paused (another worker may end or extend it), or refused while the
                    # rate ramps up: wait, then ask again.
                    await asyncio.sleep(max(found or 0.0, 0.0))
                    continue
                block = found
                if (wait_s := block.wait_s(costs, now)) > 0:
                    await asyncio.sleep(wait_s)
                    if state.block is not block:
                        continue  # given back meanwhile (a pause, new limits)
                    now = self._bank.now()
                return amounts, block.spend(costs, now)

    async def _take_block(
        self, key: LimitKey, state: _KeyState, costs: Mapping[str, float], now: float
    ) -> Block | float:
        """Give back what is left of the key's block, and take a new one sized to this
        worker's recent sending (a reservation in debt); or, when the bank took nothing (a
        pause, a ramp), the seconds to wait before asking again.

        During the start-up ramp a take the buckets cannot cover is refused, not reserved in
        debt (see :mod:`batchrun.limits.blocks`): the block is then also capped at
        :data:`~batchrun.limits.blocks.BLOCK_HORIZON_S` of the ramped limits and at the
        requests the buckets hold now as this worker last saw them (one at least), and a
        block of more than one request that is refused all the same (another worker took
        meanwhile) is followed at once by a take of one request, as before blocks grew
        during the ramp: a binding ramp is never slower for them."""
        old = state.block
        requests = old.next_requests(now) if old is not None else 1.0
        self._give_back(key, state)
        limits = self._limits_now(key, state)
        record = self._bank.record(key)
        share = record.ramp_share(now, state.policy.ramp_s) if record is not None else 1.0
        if record is not None and share < 1:
            limits = {dimension: limit * share for dimension, limit in limits.items()}
            levels = {}
            for dimension in limits:
                found = record.dimensions.get(dimension)
                bucket = found.bucket if found is not None else None
                # A bucket not made yet starts below one request (see KeyRecord.take).
                levels[dimension] = bucket.level_at(now) if bucket is not None else 0.0
            requests = min(requests, max(held_requests(costs, levels), 1.0))
        wanted = block_costs(costs, requests, limits)
        grant = await self._bank.take(key, wanted, state.policy, reserve=True)
        single = block_costs(costs, 1.0, limits)
        if (
            not grant.charged
            and grant.wait_s > 0
            # More than one request in a dimension in force (else the same take again).
            and any(wanted.get(d, 0.0) > single.get(d, 0.0) for d in limits or wanted)
            and not self._paused(key, state, now)
        ):
            # Refused during a ramp (as this worker saw it or not): the request at hand may
            # still go now.
            grant = await self._bank.take(key, single, state.policy, reserve=True)
        if not grant.charged:
            if grant.wait_s > 0 or self._paused(key, state, now):
                return max(grant.wait_s, self._pause_ends(key, state) - now)
            state.block = Block.unlimited(now)
        else:
            state.block = Block.granted(
                now=now,
                charged=grant.charged,
                levels=grant.levels,
                rates=grant.rates,
                capacities=grant.capacities,
            )
        return state.block

    def _give_back(
        self, key: LimitKey, state: _KeyState, changes: PendingChanges | None = None
    ) -> None:
        """Drop the key's block, giving what is left of it back to the key's buckets (with
        ``changes`` if given, else with the key's next take)."""
        block, state.block = state.block, None
        if block is None or not (left := block.left()):
            return
        own = changes is None
        changes = PendingChanges() if changes is None else changes
        for dimension, amount in left.items():
            changes.deltas[dimension] = changes.deltas.get(dimension, 0.0) + amount
        if own:
            self._bank.update(key, changes, state.policy)

    def _paused(self, key: LimitKey, state: _KeyState, now: float) -> bool:
        return self._pause_ends(key, state) > now

    def _pause_ends(self, key: LimitKey, state: _KeyState) -> float:
        record = self._bank.record(key)
        return max(state.paused_until, record.paused_until if record is not None else 0.0)

    async def release(self) -> None:
        """Give back every block this worker holds, and write what answers taught that is
        not written yet (when a run ends: nothing is left held in the shared buckets)."""
        for key, state in self._states.items():
            self._give_back(key, state)
        await self._bank.flush()

    def _output(self, state: _KeyState, demand: Demand) -> int:
        """Output tokens to reserve: max_tokens, or what replies were learned to take."""
        if self._settings.output_reservation == "max_tokens" or state.charges_max_tokens:
            return demand.max_tokens
        return state.outputs.reserve(demand.max_tokens)

    # -- after a send -----------------------------------------------------------------------

    def settle(self, permit: Permit, outcome: Outcome) -> None:
        """Reconcile the reservation with what the answer says, and learn from it."""
        state = self._state(permit.key)
        now = self._bank.now()
        changes = PendingChanges()
        match outcome:
            case Succeeded(usage=usage, server_limits=server_limits):
                used = Amounts.of_usage(usage)
                self._correct(permit, DIMENSIONS.measure_all(used), changes)
                prompt = (
                    usage.input_tokens
                    + usage.cache_creation_input_tokens
                    + usage.cache_read_input_tokens
                )
                state.calibration.observe(permit.demand.raw_input_tokens, prompt)
                state.outputs.observe(usage.output_tokens)
                state.typical.used(used)
                changes.admitted = used
                changes.answered_at = now
                state.consecutive_429s = 0
                state.consecutive_overloads = 0
                state.windows.answered(permit.taken_at)
                _heed(server_limits, changes)
            case Retryable(http_status=429) as retry:
                # Refused before any work: nothing was consumed.
                self._correct(permit, {}, changes)
                _heed(retry.server_limits, changes)
                self._rate_limited(permit, state, retry, now, changes)
            case Retryable(http_status=529) as retry:
                self._correct(permit, {}, changes)
                state.consecutive_overloads += 1
                pause_s = min(
                    OVERLOAD_PAUSE_S * 2 ** (state.consecutive_overloads - 1),
                    MAX_OVERLOAD_PAUSE_S,
                )
                self._pause(permit.key, state, pause_s, "529 overloaded", now, changes)
                _heed(retry.server_limits, changes)
            case Retryable() as retry:
                # A 5xx or a lost connection may have been processed: keep the reservation.
                _heed(retry.server_limits, changes)
            case Fatal() | Halt():
                self._correct(permit, {}, changes)
        if state.block is not None and self._outdates_block(permit.key, state.block, changes):
            # A pause stops spending, and new limits call for a block at their pace.
            self._give_back(permit.key, state, changes)
        if not changes.empty():
            self._bank.update(permit.key, changes, state.policy)
        if permit.endpoint_key is not None:
            self._settle_endpoint_wide(permit, outcome, now)

    def _outdates_block(self, key: LimitKey, block: Block, changes: PendingChanges) -> bool:
        """Whether what an answer taught makes the key's block stale: a pause, a 429 (which
        may lower a limit), a limit announced other than the one known, or the server
        saying it has less left than the block holds (the block goes back to the buckets,
        which the server's figure then caps, as it caps what they hold)."""
        if changes.pause_until > 0 or changes.rate_limited:
            return True
        if changes.clamps:
            left = block.left()
            if any(remaining < left.get(d, 0.0) for d, remaining in changes.clamps.items()):
                return True
        if not changes.announced:
            return False
        record = self._bank.record(key)
        known = record.dimensions if record is not None else {}
        return any(
            (found := known.get(dimension)) is None or found.announced != limit
            for dimension, limit in changes.announced.items()
        )

    def _settle_endpoint_wide(self, permit: Permit, outcome: Outcome, now: float) -> None:
        """Correct the reservation from the endpoint's limits across all its models: what
        the answer used, nothing for a refusal, all of it when the server may have worked
        (as for the model's key). A success also lets the endpoint's ramp climb."""
        assert permit.endpoint_key is not None
        changes = PendingChanges()
        match outcome:
            case Succeeded(usage=usage):
                used = DIMENSIONS.measure_all(Amounts.of_usage(usage))
                for dimension, reserved in permit.endpoint_reserved.items():
                    changes.deltas[dimension] = reserved - used.get(dimension, 0.0)
                changes.answered_at = now
            case Retryable(http_status=429 | 529) | Fatal() | Halt():
                changes.deltas = dict(permit.endpoint_reserved)
            case Retryable():
                return
        wide_state = self._state(permit.endpoint_key)
        self._bank.update(permit.endpoint_key, changes, wide_state.policy)

    def _correct(
        self, permit: Permit, actual: Mapping[str, float], changes: PendingChanges
    ) -> None:
        """Give back what was reserved but not used (``actual`` missing: nothing used)."""
        for dimension, reserved in permit.reserved.items():
            changes.deltas[dimension] = reserved - actual.get(dimension, 0.0)

    def _pause(
        self,
        key: LimitKey,
        state: _KeyState,
        pause_s: float,
        reason: str,
        now: float,
        changes: PendingChanges,
    ) -> None:
        changes.pause_until = max(changes.pause_until, now + pause_s)
        if now + pause_s > state.paused_until:
            state.paused_until, state.pause_reason = now + pause_s, reason
        if pause_s >= LONG_PAUSE_S:
            log.warning(
                "%s asks to wait %.0f s (%s) for %s; nothing is sent to it until then",
                key[0],
                pause_s,
                reason,
                key[1],
            )

    def _rate_limited(
        self,
        permit: Permit,
        state: _KeyState,
        retry: Retryable,
        now: float,
        changes: PendingChanges,
    ) -> None:
        key = permit.key
        state.consecutive_429s += 1
        exhausted = retry.server_limits.exhausted() if retry.server_limits else set()
        # A refusal that shows the server charges max_tokens says nothing of its limit.
        learn = not self._learn_charging(
            permit, state, retry.limits_named | exhausted, now, retry.server_limits
        )
        if retry.retry_after_s is not None:
            self._pause(key, state, retry.retry_after_s, "retry-after", now, changes)
        elif state.policy.start_per_min is None and not self._limits_now(key, state):
            # Nothing to wait a slot of: the old back-off.
            pause_s = min(
                DEFAULT_429_PAUSE_S * 2 ** (state.consecutive_429s - 1), MAX_DEFAULT_429_PAUSE_S
            )
            self._pause(key, state, pause_s, "a 429", now, changes)
        else:
            # The server has nothing left: wait a slot at the (lowered) limit, or for the
            # window to reopen when it counts in fixed windows (see FixedWindows).
            changes.exhausted_at.append(now)
            pause_s = state.windows.refused(now)
            learn = learn and state.windows.lowers_limits()
            if pause_s > 0:
                why = "a fixed window" if state.windows.recognised else "429s in a row"
                self._pause(key, state, pause_s, why, now, changes)
        if learn:
            changes.rate_limited.append((now, frozenset(retry.limits_named | exhausted)))

    def _learn_charging(
        self,
        permit: Permit,
        state: _KeyState,
        named: set[str] | frozenset[str],
        now: float,
        server: ServerLimits | None,
    ) -> bool:
        """Learn from a 429 whether the server charges max_tokens up front: it refused for
        a limit that counts output tokens

        - while its own ``-remaining`` header for that limit still held what this request
          was reserved (it counted the request as more than that: max_tokens, unless the
          input estimate is far off, and reserving max_tokens is safe then too). This needs
          no history, so it is seen at the first refusal (llmock's, a minute after a full
          bucket of requests it charged 512 tokens each while they used 40);
        - or while what the answers really used of it lately was well below it (under
          :data:`CHARGED_UP_FRONT_SHARE`), which reserving the learned output could not
          see coming.

        From then on this key reserves max_tokens, as the server counts
        (``output_reservation="max_tokens"`` for this key only). Returns whether this 429
        taught it."""
        if state.charges_max_tokens or self._settings.output_reservation == "max_tokens":
            return False
        key = permit.key
        record = self._bank.record(key)
        if record is None:
            return False
        in_force = self._limits_now(key, state)
        for dimension in named & _OUTPUT_DIMENSIONS:
            limit = in_force.get(dimension)
            used = record.measured_per_min(dimension, now)
            left = server.remaining.get(dimension) if server is not None else None
            reserved = permit.reserved.get(dimension)
            had_room = left is not None and reserved is not None and 0 < reserved <= left
            if had_room or (limit and used is not None and used < CHARGED_UP_FRONT_SHARE * limit):
                state.charges_max_tokens = True
                why = (
                    f"with {left:.0f} left by its own count, more than the {reserved:.0f} reserved"
                    if had_room
                    else f"at {used or 0:.0f} of {limit or 0:.0f} a minute really used"
                )
                log.info(
                    "%s refuses %s for %s %s: it charges max_tokens up front, so batchrun "
                    "reserves max_tokens for it",
                    key[0],
                    DIMENSIONS.get(dimension).counts,
                    key[1],
                    why,
                )
                return True
        return False

    def waits(self) -> list[Wait]:
        """The endpoint × models held back now, and why (a retry-after, a 429, a 529; with the
        database bank also pauses another worker set), longest first."""
        now = self._bank.now()
        found = []
        for key, state in self._states.items():
            record = self._bank.record(key)
            shared_until = record.paused_until if record is not None else -math.inf
            if state.paused_until >= shared_until and state.paused_until > now:
                found.append(Wait(key[0], key[1], state.paused_until - now, state.pause_reason))
            elif shared_until > now:
                found.append(Wait(key[0], key[1], shared_until - now, "set by another worker"))
        return sorted(found, key=lambda wait: -wait.seconds)


def _heed(server_limits: ServerLimits | None, changes: PendingChanges) -> None:
    """Adopt the limits the server announces, and never count on more than it has left."""
    if server_limits is None:
        return
    changes.announced.update(server_limits.limits)
    for dimension, remaining in server_limits.remaining.items():
        changes.clamps[dimension] = min(changes.clamps.get(dimension, remaining), remaining)
