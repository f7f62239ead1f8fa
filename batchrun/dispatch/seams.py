"""The two seams of the dispatcher: what sends a request (:class:`Sender`, the transport's
client in production) and what watches a run from inside (:class:`RunObserver`, the run
monitor)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from batchrun.records import ClaimedRequest, Outcome

if TYPE_CHECKING:
    from batchrun.dispatch.dispatcher import Dispatcher
    from batchrun.limits.limiter import Limiter, Permit


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


class RunObserver(Protocol):
    """Watches a run from inside the dispatcher: sees each request before it is sent and
    each answer, and may stop a batch (a budget)."""

    def attach(self, dispatcher: Dispatcher, limiter: Limiter) -> None:
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
