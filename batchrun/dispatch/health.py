"""Saying that a pool member left the rotation or came back: in the log, and in the database
for ``status`` and the other workers' operators (``endpoint_health``)."""

from __future__ import annotations

import logging

from batchrun.dispatch.routing import Transition
from batchrun.dispatch.worker_db import WorkerDatabase

log = logging.getLogger(__name__)


async def publish(
    db: WorkerDatabase, route: str, transition: Transition, *, now: float | None
) -> None:
    """Log the member's change of state and store it as of ``now`` (Unix seconds; None:
    log only)."""
    if transition.status == "halted":
        log.warning(
            "%s taken out of pool %s for this run: %s",
            transition.endpoint,
            route,
            transition.reason,
        )
    elif transition.status == "open":
        log.warning(
            "%s taken out of pool %s for %.0f s after repeated failures (latest: %s)",
            transition.endpoint,
            route,
            transition.open_for_s,
            transition.reason,
        )
    else:
        log.info("%s is back in pool %s", transition.endpoint, route)
    if now is None:
        return
    await db.record_endpoint_health(
        endpoint=transition.endpoint,
        state=transition.status,
        reason=transition.reason or None,
        until=now + transition.open_for_s if transition.status == "open" else None,
        now=now,
    )
