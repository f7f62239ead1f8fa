"""Requests in flight follow from the limits and the latency, in virtual time (looptime)."""

from __future__ import annotations

import asyncio

import pytest

from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.settings import DispatchConfig
from batchrun.limits.dimensions import RateLimits
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store
from tests.conftest import request_line, submit
from tests.dispatch.helpers import run_dispatcher

# Loop logic, not SQL: SQLite only (the store's tests run both backends).
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.sqlite_only]


async def peak_in_flight(
    store: Store, config: DispatchConfig, *, count: int, rpm: int, latency_s: float
) -> tuple[int, float]:
    """Run ``count`` requests at ``rpm`` with answers taking ``latency_s``; returns the most
    requests in flight seen and how long the run took."""
    app = create_app(SimulatorConfig(latency_s=latency_s))
    batch_id = submit(store, [request_line(f"r{i}", f"q {i}") for i in range(count)])
    peak = 0

    async def watch(dispatcher: Dispatcher) -> None:
        nonlocal peak
        while True:
            peak = max(peak, dispatcher.progress().in_flight)
            await asyncio.sleep(0.5)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await run_dispatcher(
        store, batch_id, app, config=config, limits=RateLimits(rpm=rpm), during=watch
    )
    assert store.batches.get(batch_id).counts.succeeded == count
    return peak, loop.time() - started


async def test_a_fast_limit_with_slow_answers_gets_rate_times_latency_in_flight(
    store: Store,
) -> None:
    # 3,000 a minute (50 a second) answered in 8 s: about 400 in flight are needed.
    peak, elapsed_s = await peak_in_flight(
        store, DispatchConfig(), count=900, rpm=3000, latency_s=8.0
    )

    assert peak >= 380
    # 18 s of sending at the limit, the gentle start's first answer and the last answers.
    assert elapsed_s < 18 + 8 + 8 + 4


async def test_a_fixed_max_concurrency_still_caps_it(store: Store) -> None:
    peak, elapsed_s = await peak_in_flight(
        store, DispatchConfig(max_concurrency=100), count=300, rpm=3000, latency_s=8.0
    )

    assert peak <= 100
    # 100 in flight at 8 s each: 12.5 a second, not 50.
    assert elapsed_s > 300 / 12.5
