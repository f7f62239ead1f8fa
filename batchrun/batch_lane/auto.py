"""The auto lane's choice (pure): the batch lane while the deadline leaves time for it, with a
cut-off after which real time takes over what the provider has not finished.

Given the batch's deadline (its ``expires_at``), the time real time would need for its
queued requests under the endpoint's limits (``realtime_s``), and how long the provider
typically takes (the endpoint's ``batch_typical_s``):

- reserve = ``realtime_s`` × ``REALTIME_SAFETY`` + ``CANCEL_SETTLE_S`` + one poll interval:
  what real time needs after a cancel to finish everything before the deadline;
- cut-off = deadline − reserve;
- batch lane if the cut-off is at least ``typical_s`` away (the provider will most likely
  finish first); the provider batches are canceled at the cut-off if they have not ended,
  and what comes back canceled goes to real time;
- real time otherwise.

When no limit applies, ``realtime_s`` is unknown and ``UNLIMITED_REALTIME_S`` stands for it.
So a batch never finishes later than its deadline because of the batch lane when real
time (as estimated) could have made it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from batchrun.records import Lane

REALTIME_SAFETY = 2.0
# How long a provider takes to stop a batch after a cancel (requests in flight finish).
CANCEL_SETTLE_S = 300.0
UNLIMITED_REALTIME_S = 600.0


def auto_lane(
    *,
    now: datetime,
    deadline: datetime,
    realtime_s: float | None,
    typical_s: float,
    poll_interval_s: float,
) -> tuple[Lane, datetime | None]:
    """(the lane, the cut-off for the batch lane or None)."""
    need_s = UNLIMITED_REALTIME_S if realtime_s is None else realtime_s
    reserve_s = need_s * REALTIME_SAFETY + CANCEL_SETTLE_S + poll_interval_s
    cut_off = deadline - timedelta(seconds=reserve_s)
    if (cut_off - now).total_seconds() >= typical_s:
        return Lane.BATCH, cut_off
    return Lane.REALTIME, None
