"""The seams of the dispatcher: what sends a request (:class:`Sender`, the transport's
client in production), what watches a run from inside (:class:`RunObserver`, the run
monitor) and what the dispatcher waits for while the queue is empty (:class:`Linger`).

Like httpx's transport base, a seam names only abstract types: Protocols, and plain values
that cross layers (records, permits, counters). What an observer sees of the dispatcher and
its limiter is a Protocol here (:class:`DispatcherView`, :class:`LimiterView`), so nothing
depends on the dispatcher through this module, not even for types."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from batchrun.records import ClaimedRequest, Outcome

if TYPE_CHECKING:
    from batchrun.dispatch.counts import DispatchProgress, RunReport
    from batchrun.dispatch.routing import MemberSnapshot
    from batchrun.limits.limiter import Permit, Wait


class Sender(Protocol):
    """Sends one Messages request to one endpoint."""

    @property
    def key_hint(self) -> str:
        """What the user should check when authentication fails (e.g. the key variable)."""
        ...

    async def send(self, params_json: str) -> Outcome:
        """POST the body and classify the answer."""
        ...

    async def count_tokens(self, params_json: str) -> int | None:
        """The endpoint's input-token count of the body, or None."""
        ...


class MembersView(Protocol):
    """The pool members a dispatcher has sent to."""

    def snapshot(self) -> list[MemberSnapshot]:
        """Every endpoint used so far, in the order first used."""
        ...


class DispatcherView(Protocol):
    """What an observer reads of the dispatcher it watches, and the one thing it may ask."""

    @property
    def report(self) -> RunReport:
        """The run's counters so far."""
        ...

    @property
    def uses_pools(self) -> bool:
        """True when a batch of the run sends through a pool."""
        ...

    @property
    def router(self) -> MembersView:
        """The pools' members and how they fare."""
        ...

    def progress(self) -> DispatchProgress:
        """What is in flight and waiting now."""
        ...

    def drain(self) -> None:
        """Stop claiming and sending (requests claimed but not sent go back to the queue)."""
        ...


class LimiterView(Protocol):
    """What an observer reads of the rate limiter."""

    @property
    def burst_s(self) -> float:
        """The buckets' size, in seconds of their limit."""
        ...

    def limit_in_force(self, key: tuple[str, str], dimension: str) -> float | None:
        """The per-minute limit applied now to a dimension of an (endpoint, model) key."""
        ...

    def waits(self) -> list[Wait]:
        """The endpoint × models held back now, and why."""
        ...


class RunObserver(Protocol):
    """Watches a run from inside the dispatcher: sees each request before it is sent and
    each answer, and may stop a batch (a budget)."""

    def attach(self, dispatcher: DispatcherView, limiter: LimiterView) -> None:
        """Called once, when the dispatcher is made (to read its progress, or drain it)."""
        ...

    def admit(self, request: ClaimedRequest, permit: Permit) -> str | None:
        """Called just before ``request`` is sent; a reason instead pauses its batch."""
        ...

    def settled(self, request: ClaimedRequest, permit: Permit, outcome: Outcome) -> None:
        """Called when the answer to a sent request is in, before it is recorded."""
        ...


class Linger(Protocol):
    """Work that may come back to the queue while the dispatcher has nothing to send (the
    batch lane: requests a provider batch expired). The dispatcher waits for it instead of
    ending."""

    def active(self) -> bool:
        """True while more work may still come."""
        ...

    async def wait(self, timeout_s: float) -> None:
        """Return when work may have come, when no more can come, or after ``timeout_s``."""
        ...
