"""`run --forever` (RunSession) and batches submitted while it runs: they join the pass in
progress, an idle session looks for them when woken, and what cannot join waits for the next
pass. The in-process simulator, a real database, virtual time (looptime)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from batchrun.config.prices import PriceTable, cost_of
from batchrun.input.ingest import submit_requests
from batchrun.limits.limiter import LimiterSettings
from batchrun.ops.session import Note, PassFinished, RunEvent, RunOptions, RunResult, RunSession
from batchrun.store.store import Store
from batchrun.transport.endpoints import resolve_endpoints
from tests.conftest import jsonl, request_line, submit

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


HAIKU = "claude-3-haiku-20240307"


def submit_with(store: Store, lines: list[dict[str, object]], **options: Any) -> str:
    """Store ``lines`` as a batch on the simulator with submit's ``options`` (lane, budget)."""
    return submit_requests(
        store,
        io.BytesIO(jsonl(lines)),
        source="test.jsonl",
        endpoint="simulator",
        now=datetime.now(UTC),
        **options,
    )


def forever_session(
    store: Store, events: list[RunEvent], *, poll_interval_s: float, max_runtime_s: float
) -> RunSession:
    """A forever run on the built-in endpoints (the in-process simulator), ending at
    ``max_runtime_s``."""
    return RunSession(
        store,
        known=resolve_endpoints({}, {}),
        prices=PriceTable(),
        env={},
        options=RunOptions(
            forever=True,
            poll_interval_s=poll_interval_s,
            max_runtime_s=max_runtime_s,
            stop_on_signals=False,
            # About joining, not finding limits: unpaced while nothing is known.
            limiter_settings=LimiterSettings(start_per_min=None),
        ),
        on_event=events.append,
    )


async def until(condition: Callable[[], bool], *, within_s: float) -> float:
    """The loop time at which ``condition`` holds, looking every 0.1 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        assert loop.time() < deadline, f"not within {within_s} s"
        await asyncio.sleep(0.1)
    return loop.time()


def ended(store: Store, batch_id: str) -> Callable[[], bool]:
    return lambda: store.batches.get(batch_id).processing_status == "ended"


def passes(events: list[RunEvent]) -> list[set[str]]:
    """The batches of each finished pass."""
    return [
        {batch.id for batch in event.result.batches}
        for event in events
        if isinstance(event, PassFinished)
    ]


async def test_a_batch_submitted_while_a_long_batch_runs_gets_its_results_within_seconds(
    store: Store,
) -> None:
    events: list[RunEvent] = []
    # A quick first answer opens the endpoint (its first request goes alone; see routing).
    slow = [request_line(f"a{i}", "[[sim:latency=120]] slow") for i in range(3)]
    long = submit(store, [request_line("quick"), *slow])
    session = forever_session(store, events, poll_interval_s=30, max_runtime_s=200)
    running = asyncio.create_task(session.run())
    loop = asyncio.get_running_loop()

    await asyncio.sleep(2)
    short = submit(store, [request_line(f"b{i}") for i in range(2)])
    submitted_at = loop.time()
    short_ended_at = await until(ended(store, short), within_s=60)
    long_was_running = store.batches.get(long).processing_status == "in_progress"
    result: RunResult = await running

    # The join task looks every 0.5 s, and the dispatcher claims what joined at once.
    assert short_ended_at - submitted_at < 1.5
    assert long_was_running
    assert store.batches.get(short).counts.succeeded == 2
    assert store.batches.get(long).counts.succeeded == 4
    assert Note(f"{short}: joined the run in progress") in events
    # One pass did both: the pass reports the batch that joined it.
    assert passes(events) == [{long, short}]
    assert result.passes == 1


async def test_wake_makes_an_idle_forever_session_look_for_work_at_once(store: Store) -> None:
    events: list[RunEvent] = []
    session = forever_session(store, events, poll_interval_s=600, max_runtime_s=900)
    session.wake()  # before run(): nothing to wake, and no error
    running = asyncio.create_task(session.run())
    loop = asyncio.get_running_loop()

    await until(
        lambda: any(isinstance(e, Note) and "no queued work" in e.text for e in events), within_s=5
    )
    batch_id = submit(store, [request_line("a")])
    woken_at = loop.time()
    # From another thread, as a server's request handler would.
    await asyncio.to_thread(session.wake)
    done_at = await until(ended(store, batch_id), within_s=60)
    result = await running
    session.wake()  # after run() ended: nothing to wake, and no error

    # Without the wake, the session would have looked again only 600 s after going idle.
    assert done_at - woken_at < 2
    assert store.batches.get(batch_id).counts.succeeded == 1
    assert passes(events) == [{batch_id}]
    assert result.passes == 1


async def test_a_batch_lane_batch_submitted_mid_pass_waits_for_the_next_pass_and_completes(
    store: Store,
) -> None:
    events: list[RunEvent] = []
    long = submit(store, [request_line(f"a{i}", "[[sim:latency=30]] slow") for i in range(2)])
    session = forever_session(store, events, poll_interval_s=1, max_runtime_s=300)
    running = asyncio.create_task(session.run())

    await asyncio.sleep(2)
    in_batch_lane = submit_with(store, [request_line(f"c{i}") for i in range(3)], lane="batch")
    await asyncio.sleep(5)
    # The first pass is still busy with `long`, and has not taken the new batch.
    waiting = store.batches.get(in_batch_lane)
    provider_batches_then = store.provider_batches.of_batches([in_batch_lane])
    long_was_running = store.batches.get(long).processing_status == "in_progress"
    await until(ended(store, in_batch_lane), within_s=200)
    await running

    assert long_was_running
    assert waiting.counts.processing == 3
    assert provider_batches_then == []
    assert store.batches.get(in_batch_lane).counts.succeeded == 3
    assert store.batches.get(long).counts.succeeded == 2
    assert passes(events)[:2] == [{long}, {in_batch_lane}]
    assert not any(isinstance(e, Note) and "joined" in e.text for e in events)
    lanes = {tokens.lane for tokens in store.usage.by_model([in_batch_lane])[in_batch_lane]}
    assert lanes == {"batch"}


async def test_a_batch_that_joins_a_pass_keeping_budgets_is_held_to_its_own_budget(
    store: Store,
) -> None:
    events: list[RunEvent] = []
    slow = [request_line(f"a{i}", "[[sim:latency=120]] slow", model=HAIKU) for i in range(3)]
    long = submit_with(store, [request_line("quick", model=HAIKU), *slow], max_cost_usd=10.0)
    session = forever_session(store, events, poll_interval_s=30, max_runtime_s=200)
    running = asyncio.create_task(session.run())

    await asyncio.sleep(2)
    budget = 0.003
    lines = [
        request_line(f"b{i}", "[[sim:latency=1]] hi", model=HAIKU, max_tokens=1000)
        for i in range(50)
    ]
    budgeted = submit_with(store, lines, max_cost_usd=budget)
    await until(lambda: store.batches.get(budgeted).paused_reason is not None, within_s=60)
    long_was_running = store.batches.get(long).processing_status == "in_progress"
    await running

    batch = store.batches.get(budgeted)
    spent = cost_of(store.usage.by_model([budgeted])[budgeted], PriceTable())
    assert long_was_running
    assert Note(f"{budgeted}: joined the run in progress") in events
    assert batch.paused_reason is not None and "max-cost $0.0030 reached" in batch.paused_reason
    assert 0 < batch.counts.succeeded < 50
    assert spent.usd is not None and spent.usd <= budget
    assert store.batches.get(long).counts.succeeded == 4
