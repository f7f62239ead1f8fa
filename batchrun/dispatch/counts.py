"""What a dispatcher tells about its run: the counts of what it did (:class:`RunReport`) and
the work in its hands (:class:`DispatchProgress`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from batchrun.dispatch.decisions import Decision, Finish, Retry
from batchrun.dispatch.repairs import Repair
from batchrun.records import Outcome, Retryable


@dataclass
class RunReport:
    """What one run did."""

    sent: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    retried: int = 0
    # Answers that did not match their schema and went back for a repair send.
    repaired: int = 0
    rate_limited: int = 0
    paused: dict[str, str] = field(default_factory=dict)
    error_types: Counter[str] = field(default_factory=Counter)
    interrupted: str | None = None
    released: int = 0
    # Requests not sent because another worker had taken them over meanwhile.
    lost_leases: int = 0
    # Batches this run stopped sending because they were canceled meanwhile.
    canceled_batches: set[str] = field(default_factory=set)
    # For progress lines: the latest failure that was retried, short ("HTTP 529
    # overloaded_error"), and the error type of the latest request that ended errored.
    last_retry: str | None = None
    last_error: str | None = None

    def count(self, decision: Decision | Repair, outcome: Outcome) -> None:
        """Count what an answer led to."""
        if isinstance(outcome, Retryable) and outcome.rate_limited:
            self.rate_limited += 1
        match decision:
            case Finish(result=result) if result.result_type == "succeeded":
                self.succeeded += 1
            case Finish(result=result):
                self.errored += 1
                self.error_types[result.error_type or "api_error"] += 1
                self.last_error = result.error_type or "api_error"
            case Retry(retry=retry):
                self.retried += 1
                self.last_retry = retry.last_error
            case Repair():
                self.repaired += 1


@dataclass(frozen=True)
class DispatchProgress:
    """Requests this worker holds: being sent (or recorded), and waiting for the limiter."""

    in_flight: int
    waiting: int
