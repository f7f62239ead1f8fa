"""Prompt-cache groups and duplicates in the dispatch loop, on the in-process simulator in
virtual time: the first of a group answers alone, its followers then go together."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime

import pytest

from batchrun.input.ingest import submit_requests
from batchrun.records import cache_hit_rate
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store
from tests.conftest import jsonl, request_line, submit
from tests.dispatch.helpers import dispatch

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

LATENCY_S = 2.0
LEADER_LATENCY_S = 30.0
# Long enough for the simulator to cache it (its minimum is 1,024 tokens).
SYSTEM = [
    {
        "type": "text",
        "text": "You answer questions about the shared handbook. " * 300,
        "cache_control": {"type": "ephemeral"},
    }
]


async def test_a_leader_answers_before_any_follower_is_sent_and_they_then_go_together(
    store: Store,
) -> None:
    app = create_app(SimulatorConfig(latency_s=LATENCY_S))
    # The leader answers slowly: longer than the dispatcher's gentle start waits for a first
    # answer, so only its wait_for holds the followers back.
    leader = request_line("lead", f"[[sim:latency={LEADER_LATENCY_S:g}]] question", system=SYSTEM)
    followers = [request_line(f"f{i}", f"question {i}", system=SYSTEM) for i in range(20)]
    batch_id = submit(store, [leader, *followers])
    started = asyncio.get_running_loop().time()

    await dispatch(store, batch_id, app)

    received = sorted(entry.loop_time for entry in app.stats.log)
    assert len(received) == 21
    leader_answered = received[0] + LEADER_LATENCY_S
    assert received[1] >= leader_answered
    # Together, not one by one: all 20 within one answer's latency.
    assert received[-1] - received[1] < LATENCY_S
    assert asyncio.get_running_loop().time() - started < LEADER_LATENCY_S + 3 * LATENCY_S
    batch = store.batches.get(batch_id)
    assert batch.counts.succeeded == 21
    # One cache write (the leader), twenty reads.
    details = {row.custom_id: row for row in store.results.iter_details(batch_id)}
    assert details["lead"].cache_creation_input_tokens
    assert not details["lead"].cache_read_input_tokens
    assert all(details[f"f{i}"].cache_read_input_tokens for i in range(20))
    assert not any(details[f"f{i}"].cache_creation_input_tokens for i in range(20))
    tokens = batch.tokens
    rate = cache_hit_rate(tokens.cache_read_input_tokens, tokens.cache_creation_input_tokens)
    assert rate == round(20 / 21, 4)


async def test_followers_of_a_leader_that_failed_are_sent_without_waiting_longer(
    store: Store,
) -> None:
    app = create_app(SimulatorConfig(latency_s=LATENCY_S))
    leader = request_line("lead", "[[sim:status=400]] question", system=SYSTEM)
    followers = [request_line(f"f{i}", f"question {i}", system=SYSTEM) for i in range(5)]
    batch_id = submit(store, [leader, *followers])

    await dispatch(store, batch_id, app)

    batch = store.batches.get(batch_id)
    assert (batch.counts.errored, batch.counts.succeeded) == (1, 5)
    assert app.stats.received == 6


async def test_a_duplicate_with_reuse_is_not_sent_when_its_original_succeeds(
    store: Store,
) -> None:
    app = create_app(SimulatorConfig(latency_s=LATENCY_S))
    lines = [request_line("a", "same"), request_line("b", "same"), request_line("c", "other")]
    batch_id = submit_requests(
        store,
        io.BytesIO(jsonl(lines)),
        source="test.jsonl",
        endpoint="simulator",
        now=datetime.now(UTC),
        reuse=True,
    )

    report = await dispatch(store, batch_id, app)

    assert app.stats.received == report.sent == 2
    answers = {row.custom_id: row for row in store.results.iter_details(batch_id)}
    assert answers["b"].body == answers["a"].body
    assert answers["b"].reused_from == batch_id
    assert store.batches.get(batch_id).processing_status == "ended"
