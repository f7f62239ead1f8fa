"""A worker that stood still longer than its lease (SIGSTOP, a frozen VM) must not send what
another worker took over meanwhile: that would pay for those requests twice."""

from __future__ import annotations

import asyncio
import threading
import time

from batchrun.dispatch.counts import RunReport
from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.settings import DispatchConfig
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.limiter import Limiter, LimiterSettings
from batchrun.records import Outcome
from batchrun.simulator import SimulatorApp, create_app
from batchrun.store.store import Store
from batchrun.transport.endpoints import SIMULATOR, builtin_endpoints
from batchrun.transport.http import create_http_client, in_process_transport
from batchrun.transport.messages import MessagesClient
from tests.conftest import request_line, submit
from tests.dispatch.helpers import NO_AUTH

LEASE_S = 1.0
FROZEN_S = 3.0
# The limiter's buckets start empty, at one a minute: the first worker's first send (alone:
# the gentle start) at 1 s, its second (which freezes) at 2 s.
FREEZE_AT_S = 2.0


class FreezesOnce:
    """A sender whose second send blocks its whole event loop, as a stopped process would
    (the first goes alone and answers: the gentle start)."""

    def __init__(self, client: MessagesClient) -> None:
        self._client = client
        self._sends = 0

    @property
    def key_hint(self) -> str:
        return self._client.key_hint

    async def send(self, params_json: str) -> Outcome:
        self._sends += 1
        if self._sends == 2:
            time.sleep(FROZEN_S)  # noqa: ASYNC251 - the point: nothing on this loop runs
        return await self._client.send(params_json)

    async def count_tokens(self, params_json: str) -> int | None:
        return None


async def work(
    store: Store, batch_id: str, app: SimulatorApp, *, freeze: bool, limits: RateLimits | None
) -> RunReport:
    endpoint = builtin_endpoints({})[SIMULATOR]
    async with create_http_client(
        timeout_s=30, max_connections=8, transport=in_process_transport(app)
    ) as http:
        client = MessagesClient(http, endpoint=endpoint, headers=NO_AUTH)
        db = WorkerDatabase(store)
        try:
            dispatcher = Dispatcher(
                db=db,
                senders={SIMULATOR: FreezesOnce(client) if freeze else client},
                # Timed from the start: without the start-up ramp; the worker without limits
                # sends unpaced (no slow start: finding limits is not what this is about).
                limiter=Limiter(
                    overrides=limits, settings=LimiterSettings(ramp_s=0, start_per_min=None)
                ),
                config=DispatchConfig(max_concurrency=4, lease_s=LEASE_S),
            )
            return await dispatcher.run({batch_id: SIMULATOR})
        finally:
            db.close()


def test_a_worker_that_stood_still_past_its_lease_does_not_send_what_was_taken_over(
    sqlite_store: Store,
) -> None:
    store = sqlite_store
    app = create_app()
    batch_id = submit(store, [request_line(f"r{i}", f"question {i}") for i in range(6)])
    frozen_report: list[RunReport] = []

    # The first worker sends one request and then holds four: one in flight (and frozen),
    # three waiting for the limiter (one a second).
    frozen = threading.Thread(
        target=lambda: frozen_report.append(
            asyncio.run(work(store, batch_id, app, freeze=True, limits=RateLimits(rpm=60)))
        )
    )
    frozen.start()
    # Once the first worker's leases have run out (a lease after its last renewal, when it
    # froze), the second takes its four and the one left, and sends them.
    time.sleep(FREEZE_AT_S + LEASE_S + 0.5)
    other = asyncio.run(work(store, batch_id, app, freeze=False, limits=None))
    frozen.join(30)

    batch = store.batches.get(batch_id)
    assert batch.counts.succeeded == 6
    (report,) = frozen_report
    # Only the request that was in flight when the worker froze may have been sent twice;
    # the first worker checked the others' leases before sending and found them gone (or
    # saw that their batch had ended meanwhile).
    assert app.stats.duplicate_receptions <= 1
    assert report.lost_leases >= 1
    assert report.sent == 2
    assert app.stats.received == 6 + app.stats.duplicate_receptions
    assert other.sent == 5
