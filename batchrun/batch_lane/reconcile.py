"""After a crash: was a provider batch created for an intent row? (pure)

The provider's create takes no idempotency key, so a create whose answer was lost (a kill -9
after the body went out, a timeout, a 500) may or may not have made a batch. Before creating
again, batchrun compares the intent row with the provider's list of batches:

- a batch batchrun does not know yet, created within ``[intent_at - skew, intent_at + grace
  + skew]``, holding exactly the intent's number of requests, is a candidate;
- one candidate: it is the intent's batch (adopted; its results are imported as usual);
- several: batchrun refuses to guess; the row becomes ``ambiguous`` and its requests stay
  held, never sent again, until a person settles it (``batchrun lanes``);
- none, once ``grace`` has passed since the intent (no create still in flight can land
  later): the create did not happen; the requests go back to the queue;
- none yet, within the grace: look again later.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from batchrun.records import ProviderBatchRow
from batchrun.transport.batch_api import ProviderBatchInfo

# How far the provider's clock may be from the database's.
CLOCK_SKEW_S = 120.0


@dataclass(frozen=True)
class Adopt:
    """The intent's batch was found."""

    batch: ProviderBatchInfo


@dataclass(frozen=True)
class NotCreated:
    """No batch can be the intent's, and none can appear any more."""

    why: str


@dataclass(frozen=True)
class Ambiguous:
    """Several batches could be the intent's."""

    why: str


@dataclass(frozen=True)
class WaitAndSee:
    """Nothing found yet, but a create in flight could still land."""


Verdict = Adopt | NotCreated | Ambiguous | WaitAndSee


def reconcile(
    row: ProviderBatchRow,
    listed: Sequence[ProviderBatchInfo],
    *,
    known_ids: Collection[str],
    now: datetime,
    grace_s: float,
    skew_s: float = CLOCK_SKEW_S,
) -> Verdict:
    """What the provider's list says about the intent ``row``."""
    earliest = row.intent_at - timedelta(seconds=skew_s)
    latest = row.intent_at + timedelta(seconds=grace_s + skew_s)
    candidates = [
        batch
        for batch in listed
        if batch.id not in known_ids
        and batch.request_total == row.request_count
        and (batch.created_at is None or earliest <= batch.created_at <= latest)
    ]
    if len(candidates) == 1:
        return Adopt(candidates[0])
    if candidates:
        ids = ", ".join(batch.id for batch in candidates)
        return Ambiguous(
            f"{len(candidates)} provider batches ({ids}) were created around the intent with "
            f"{row.request_count:,} requests each; batchrun will not guess which one holds "
            "these requests"
        )
    if now - row.intent_at >= timedelta(seconds=grace_s):
        return NotCreated(
            f"no provider batch with {row.request_count:,} requests was created around "
            f"{row.intent_at:%Y-%m-%d %H:%M:%S} UTC; the create did not happen"
        )
    return WaitAndSee()
