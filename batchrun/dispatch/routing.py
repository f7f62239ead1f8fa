"""Which endpoint a request goes to, and when: pools, failover and a gentle start.

Every batch is sent through a route: a pool's members, or its one endpoint (a pool of one).
The :class:`Router` keeps one :class:`MemberState` per endpoint for the whole run and
decides, request by request:

- **A gentle start.** The first request to an endpoint (in a run, and again after the
  endpoint was taken out of rotation) goes alone; the others wait for its answer, up to
  :data:`FIRST_ANSWER_WAIT_S` in all (a long generation may take minutes to answer; a 401
  comes at once). A wrong key then costs one 401, not one per request claimed. An answer
  that shows the request got past authentication (a success, a 4xx about the request, a
  429) opens the endpoint at once; after a connection failure or a 5xx the next request
  goes alone again, until that time is up.
- **The most headroom.** Among a pool's members a request goes to the one where it would
  wait least: (requests already routed there + 1) ÷ (the requests a second its limits allow ×
  its weight), plus any pause (a retry-after) in force. A member without limits counts as
  very fast, so members without limits share by their weights and requests in hand.
- **Prompt caching still hits.** A request with a ``cache_control`` breakpoint goes to the
  member its prompt prefix hashes to (weighted rendezvous hashing), unless that member's
  wait is more than :data:`AFFINITY_SLACK_S` longer than the best: then to the next in the
  prefix's order. Requests sharing a prefix thus stay on one member while it keeps up, and
  spill to a second (which writes the cache once) only when it cannot.
- **Failover.** In a pool of two or more, a member that fails :data:`FAILURES_TO_OPEN`
  times in a row (connection errors, timeouts, 5xx, 529, and 200s whose body is not a
  Message: an HTML login page, a body that is not JSON, JSON of another shape) is taken out
  of rotation for
  :data:`FIRST_OPEN_S`, doubling up to :data:`MAX_OPEN_S` while its probes fail (a circuit
  breaker: after the wait one probe goes, alone; an answer closes the breaker). Its share
  flows to the others. Bad credentials (401, 403, billing) take a member out for the rest of
  the run, and its requests go back to the queue unsent for the others; only when every
  member is out that way does the batch pause. When every member is out for failures, the
  requests wait for the first probe instead of using up their attempts.
- **One more member for an unreadable answer.** A request whose answer could not be read is
  sent once more, at once, to another member (``avoid``: the one that gave it; see
  ``dispatch.decisions.unreadable_from``), waiting for one to be in rotation if need be; a
  second unreadable answer in a row ends it errored. Such an answer may have been billed, so
  a request is never sent more than once after one.

A single endpoint has no breaker: its failures are retried with back-off and count against
each request's attempts, as they always did. Nothing here does I/O; time comes in as
arguments and the event loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from batchrun.input.digests import cache_prefix_key
from batchrun.limits.windows import RecentValues
from batchrun.records import Fatal, Halt, Outcome, Pool, PoolMember, Retryable, Succeeded, route_of

# A member failing this many times in a row is taken out of rotation...
FAILURES_TO_OPEN = 5
# ... for this long, doubling while its probes fail, up to MAX_OPEN_S.
FIRST_OPEN_S = 10.0
MAX_OPEN_S = 300.0
# A request with a cached prompt prefix waits up to this much longer on its prefix's member
# than on the best one, so that it reads the cache there instead of writing it elsewhere.
AFFINITY_SLACK_S = 2.0
# The request rate a member without limits counts as having, when routing.
UNLIMITED_RATE_PER_S = 1_000_000.0
# The others wait for the first request's answer this long at most: a wrong key's 401 comes
# back in well under a second, while a long generation's answer may take minutes.
FIRST_ANSWER_WAIT_S = 10.0
# Why a member that answers 200s with no Message in them is out of rotation.
UNREADABLE_REASON = "answers 200 with a body that is not a Message"
# Shares and rates in progress views are over this window.
RATE_WINDOW_S = 60.0
# How much each new latency moves the average.
LATENCY_SMOOTHING = 0.1

MemberStatus = Literal["closed", "open", "halted"]


class RateView(Protocol):
    """What routing needs to know of the limits (the limiter)."""

    def request_rate_per_s(self, endpoint: str, model: str) -> float | None:
        """Requests a second the limits in force allow for this key; None: no limit."""
        ...

    def paused_for_s(self, endpoint: str, model: str) -> float:
        """Seconds this key is held back now (a retry-after), 0 if not."""
        ...


@dataclass
class MemberState:
    """How an endpoint fares in this run."""

    endpoint: str
    status: MemberStatus = "closed"
    reason: str = ""
    # Loop time when an open member may be probed again, and how long the next opening is.
    open_until: float = 0.0
    open_s: float = FIRST_OPEN_S
    consecutive_failures: int = 0
    # An answer showed that requests get past authentication (since it last came back).
    tested: bool = False
    # A lone first request is out.
    probing: bool = False
    # When the first lone request of this start went (loop time); None: not starting.
    gentle_since: float | None = None
    # Requests routed here and not yet answered (waiting for the limiter or in flight).
    outstanding: int = 0
    answered: int = 0
    answers: RecentValues[None] = field(default_factory=lambda: RecentValues(RATE_WINDOW_S))
    latency_s: float | None = None

    def usable(self, now: float) -> bool:
        """In rotation: closed, or open with its wait over (a probe may go)."""
        return self.status == "closed" or (self.status == "open" and now >= self.open_until)


@dataclass(frozen=True)
class Assignment:
    """Where one request goes: the member, the model name it is sent with, and whether it is
    the member's lone first request."""

    member: PoolMember
    model: str
    probe: bool

    @property
    def endpoint(self) -> str:
        return self.member.endpoint


@dataclass(frozen=True)
class Halted:
    """Every member of the route is out for bad credentials (or billing): pause the batch."""

    reasons: tuple[str, ...]


@dataclass(frozen=True)
class MemberSnapshot:
    """One endpoint as progress shows it."""

    endpoint: str
    status: MemberStatus
    reason: str
    answered: int
    per_minute: float
    outstanding: int
    open_for_s: float


@dataclass(frozen=True)
class Transition:
    """A member went out of rotation or came back (to be published for `status`)."""

    endpoint: str
    status: MemberStatus
    reason: str
    open_for_s: float


class Router:
    """Chooses each request's member and learns from the answers (see the module doc)."""

    def __init__(self, pools: Mapping[str, Pool], rates: RateView) -> None:
        self._pools = pools
        self._rates = rates
        self._states: dict[str, MemberState] = {}
        self._changed = asyncio.Event()
        self._started_at: float | None = None

    def route(self, name: str) -> Pool:
        """The pool called ``name``, or a pool of the one endpoint."""
        return route_of(name, self._pools)

    def state(self, endpoint: str) -> MemberState:
        """The state of one endpoint (made on first use)."""
        found = self._states.get(endpoint)
        if found is None:
            found = self._states[endpoint] = MemberState(endpoint)
        return found

    def latency_s(self, endpoint: str) -> float | None:
        """The endpoint's average answer time so far, or None before its first answer."""
        return self.state(endpoint).latency_s

    # -- choosing ---------------------------------------------------------------------------

    async def assign(
        self, route: str, model: str, params_json: str, *, avoid: str | None = None
    ) -> Assignment | Halted:
        """Wait until a member of ``route`` may take a request for ``model``; returns where it
        goes (counted as outstanding there until :meth:`finished` or :meth:`abandon`), or
        :class:`Halted` when every member is out for bad credentials. ``avoid``: a member not
        to use while another one is not out for bad credentials (its answer to this request
        could not be read)."""
        pool = self.route(route)
        prefix = cache_prefix_key(params_json)
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        while True:
            now = loop.time()
            if self._started_at is None:
                self._started_at = now
            # A request with a cached prefix waits a little for its member's first answer.
            patient = prefix is not None and now - asked_at < AFFINITY_SLACK_S
            choice = self._choose(pool, model, prefix, now, patient=patient, avoid=avoid)
            if isinstance(choice, Assignment | Halted):
                return choice
            changed = self._changed
            if patient:
                remaining_s = asked_at + AFFINITY_SLACK_S - now
                choice = remaining_s if choice is None else min(choice, remaining_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=choice)

    def _choose(
        self,
        pool: Pool,
        model: str,
        prefix: str | None,
        now: float,
        *,
        patient: bool = False,
        avoid: str | None = None,
    ) -> Assignment | Halted | float | None:
        """An assignment; Halted; or how long to wait before trying again (None: until
        something changes). ``patient``: wait for the prefix's member while its first
        request is out, rather than go to another. ``avoid``: see :meth:`assign`."""
        states = {member.endpoint: self.state(member.endpoint) for member in pool.members}
        if all(state.status == "halted" for state in states.values()):
            return Halted(tuple(dict.fromkeys(state.reason for state in states.values())))
        members = pool.members
        if avoid is not None:
            others = tuple(
                m for m in members if m.endpoint != avoid and states[m.endpoint].status != "halted"
            )
            members = others or members
        usable = [m for m in members if states[m.endpoint].usable(now)]
        if not usable:
            reopen = min(
                states[m.endpoint].open_until
                for m in members
                if states[m.endpoint].status == "open"
            )
            return max(reopen - now, 0.0)
        starting = []
        for member in usable:
            state = states[member.endpoint]
            if not state.tested and state.gentle_since is not None:
                if now >= state.gentle_since + FIRST_ANSWER_WAIT_S:
                    # No verdict on the key in that long (a long generation, or answers
                    # that fail otherwise): the others wait no longer.
                    state.tested, state.gentle_since = True, None
                else:
                    starting.append(state.gentle_since)
        ready = [m for m in usable if states[m.endpoint].tested or not states[m.endpoint].probing]
        if not ready:
            return min(starting) + FIRST_ANSWER_WAIT_S - now
        if len(ready) == 1 and (prefix is None or not patient or usable == ready):
            # One candidate (one endpoint, most often): nothing to weigh, per request.
            member = ready[0]
        elif prefix is not None:
            owner = min(usable, key=lambda m: _rendezvous(prefix, m))
            if patient and owner not in ready:
                return None
            waits = self._expected_waits_s(ready, model, states)
            best = min(waits.values())
            ordered = sorted(ready, key=lambda m: _rendezvous(prefix, m))
            member = next(m for m in ordered if waits[m.endpoint] <= best + AFFINITY_SLACK_S)
        else:
            waits = self._expected_waits_s(ready, model, states)
            member = min(ready, key=lambda m: waits[m.endpoint])
        state = states[member.endpoint]
        probe = not state.tested
        if probe:
            state.probing = True
            if state.gentle_since is None:
                state.gentle_since = now
        state.outstanding += 1
        return Assignment(member, member.model_for(model), probe)

    def _expected_waits_s(
        self, ready: list[PoolMember], model: str, states: Mapping[str, MemberState]
    ) -> dict[str, float]:
        return {m.endpoint: self._expected_wait_s(m, model, states[m.endpoint]) for m in ready}

    def _expected_wait_s(self, member: PoolMember, model: str, state: MemberState) -> float:
        name = member.model_for(model)
        rate = self._rates.request_rate_per_s(member.endpoint, name)
        if rate is None or rate <= 0:
            rate = UNLIMITED_RATE_PER_S
        paused_s = self._rates.paused_for_s(member.endpoint, name)
        return (state.outstanding + 1) / (rate * member.weight) + paused_s

    def all_halted(self, route: str) -> bool:
        """Whether every member of the route is out for bad credentials."""
        return all(self.state(m.endpoint).status == "halted" for m in self.route(route).members)

    def can_fail_over(self, route: str, endpoint: str) -> bool:
        """Whether a member of ``route`` other than ``endpoint`` may still take its requests
        (one not out for bad credentials): where an answer that could not be read is sent
        again."""
        return any(
            member.endpoint != endpoint and self.state(member.endpoint).status != "halted"
            for member in self.route(route).members
        )

    def halt_reasons(self, route: str) -> str:
        """Why the route's halted members are out, each reason once."""
        reasons = (self.state(m.endpoint).reason for m in self.route(route).members)
        return "; ".join(dict.fromkeys(reason for reason in reasons if reason))

    # -- after a send -----------------------------------------------------------------------

    def abandon(self, assignment: Assignment) -> None:
        """The request was not sent after all (its batch stopped, its lease was lost)."""
        state = self.state(assignment.endpoint)
        state.outstanding -= 1
        if assignment.probe:
            state.probing = False
        self._notify()

    def finished(
        self,
        route: str,
        assignment: Assignment,
        outcome: Outcome,
        *,
        latency_s: float,
        halt_reason: str = "",
    ) -> Transition | None:
        """Learn from an answer; returns the member's change of state, if any."""
        state = self.state(assignment.endpoint)
        state.outstanding -= 1
        if assignment.probe:
            state.probing = False
        now = asyncio.get_running_loop().time()
        breakers = len(self.route(route).members) > 1
        before = (state.status, state.open_until)
        match outcome:
            case Halt():
                state.status, state.reason = "halted", halt_reason
                state.tested, state.gentle_since = False, None
            case Retryable(http_status=status) if status is None or status >= 500:
                self._failed(state, outcome.reason, now, breakers=breakers)
            case Retryable(unreadable=True) | Fatal(unreadable=True):
                # A 200 that is no Message (a login page, a proxy's error): the member is
                # broken, not the request.
                self._failed(state, UNREADABLE_REASON, now, breakers=breakers)
            case Succeeded() | Fatal() | Retryable():
                # An answer past authentication: the endpoint works.
                self._answered(state, now, latency_s, success=isinstance(outcome, Succeeded))
        self._notify()
        if (state.status, state.open_until) == before:
            return None
        return Transition(
            state.endpoint, state.status, state.reason, max(state.open_until - now, 0.0)
        )

    def _failed(self, state: MemberState, reason: str, now: float, *, breakers: bool) -> None:
        state.consecutive_failures += 1
        probe_failed = state.status == "open"
        if breakers and (probe_failed or state.consecutive_failures >= FAILURES_TO_OPEN):
            self._open(state, reason, now)

    def _open(self, state: MemberState, reason: str, now: float) -> None:
        state.status, state.reason = "open", reason
        state.open_until = now + state.open_s
        state.open_s = min(state.open_s * 2, MAX_OPEN_S)
        state.consecutive_failures = 0
        state.tested, state.gentle_since = False, None

    def _answered(self, state: MemberState, now: float, latency_s: float, *, success: bool) -> None:
        state.tested, state.gentle_since = True, None
        state.consecutive_failures = 0
        if state.status == "open":
            state.status, state.reason, state.open_s = "closed", "", FIRST_OPEN_S
        if success:
            state.answered += 1
            state.answers.add(now, None)
            previous = state.latency_s
            state.latency_s = (
                latency_s
                if previous is None
                else previous + LATENCY_SMOOTHING * (latency_s - previous)
            )

    def _notify(self) -> None:
        # Wake every request waiting for a change, then start a new generation of waiters.
        self._changed.set()
        self._changed = asyncio.Event()

    # -- reading ----------------------------------------------------------------------------

    def snapshot(self) -> list[MemberSnapshot]:
        """Every endpoint used so far, in the order first used."""
        now = asyncio.get_running_loop().time()
        span_s = min(RATE_WINDOW_S, now - self._started_at) if self._started_at else 0.0
        found = []
        for state in self._states.values():
            recent = sum(1 for _ in state.answers.at(now))
            found.append(
                MemberSnapshot(
                    endpoint=state.endpoint,
                    status=state.status,
                    reason=state.reason,
                    answered=state.answered,
                    per_minute=recent * 60.0 / span_s if span_s > 1.0 else 0.0,
                    outstanding=state.outstanding,
                    open_for_s=max(state.open_until - now, 0.0) if state.status == "open" else 0,
                )
            )
        return found


def _rendezvous(prefix: str, member: PoolMember) -> float:
    """Weighted rendezvous hashing: the member with the lowest value owns the prefix; a
    member's share of prefixes follows its weight."""
    digest = hashlib.blake2b(f"{prefix}\0{member.endpoint}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return -math.log(unit) / member.weight
