"""Running the dispatcher in tests: one batch, to completion, against an ASGI app (the
in-process simulator), through a real httpx client and the worker's database route."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping

from batchrun.dispatch.counts import RunReport
from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.settings import DispatchConfig
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.limiter import Limiter, LimiterSettings
from batchrun.store.store import Store
from batchrun.transport.auth import RequestHeaders
from batchrun.transport.endpoints import SIMULATOR, Endpoint, builtin_endpoints
from batchrun.transport.http import create_http_client, in_process_transport
from batchrun.transport.messages import MessagesClient

FAST_RETRIES = DispatchConfig(max_attempts=4, retry_initial_delay_s=1.0, retry_max_delay_s=8.0)

NO_AUTH = RequestHeaders({"content-type": "application/json"}, ())

# These tests are about dispatch, not about finding unknown limits: nothing configured, the
# limiter sends unpaced (tests/limits and test_unknown_limits cover the start rate).
UNPACED = LimiterSettings(start_per_min=None)


async def dispatch(
    store: Store,
    batch_id: str,
    app: object,
    *,
    config: DispatchConfig = FAST_RETRIES,
    limits: RateLimits | None = None,
    endpoint: Endpoint | None = None,
    limiter: Limiter | None = None,
) -> RunReport:
    """Run one batch to completion against ``app`` through a real httpx client. The limiter
    (``limiter``, else one with ``limits`` for every model) keeps its buckets in memory here,
    so virtual time stays exact; the shared bank is tested on its own in virtual time
    (test_shared_limits.py)."""
    return await run_dispatcher(
        store, batch_id, app, config=config, limits=limits, endpoint=endpoint, limiter=limiter
    )


async def run_dispatcher(
    store: Store,
    batch_id: str,
    app: object,
    *,
    config: DispatchConfig = FAST_RETRIES,
    limits: RateLimits | None = None,
    during: Callable[[Dispatcher], Awaitable[None]] | None = None,
    endpoint: Endpoint | None = None,
    limiter: Limiter | None = None,
) -> RunReport:
    """:func:`dispatch`, with ``during(dispatcher)`` running alongside (to stop it, say)."""
    endpoint = endpoint or builtin_endpoints({})[SIMULATOR]
    async with create_http_client(
        timeout_s=60,
        max_connections=config.max_concurrency or config.in_flight_ceiling,
        transport=in_process_transport(app),
    ) as http:
        sender = MessagesClient(http, endpoint=endpoint, headers=NO_AUTH)
        db = WorkerDatabase(store)
        dispatcher = Dispatcher(
            db=db,
            senders={SIMULATOR: sender},
            limiter=limiter or Limiter(overrides=limits, settings=UNPACED),
            config=config,
        )
        side = asyncio.ensure_future(during(dispatcher)) if during else None
        try:
            return await dispatcher.run({batch_id: SIMULATOR})
        finally:
            db.close()
            if side is not None:
                side.cancel()
                await asyncio.gather(side, return_exceptions=True)


def results_by_id(store: Store, batch_id: str) -> Mapping[str, dict[str, object]]:
    found = {}
    for row in store.results.iter_rows(batch_id):
        found[row.custom_id] = {
            "state": row.state,
            "body": json.loads(row.body) if row.body else None,
        }
    return found
