"""The prompt-cache groups the batch lane keeps warm, in the store, on both backends: which
groups a provider batch holds, when each entry was last warmed, and the refreshes' tokens
(kept in the database, so a restarted run goes on where the last one stopped)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, create_engine

from batchrun.records import ProviderIntent, Usage
from batchrun.store.store import Store
from tests.store.test_reuse import NOW, answer, cached, put, rows

# A leader's answer: of its 3 cache-write tokens, 3 went to the 1-hour cache.
LEADER_USAGE = Usage(10, 5, 3, 7, cache_creation_1h_input_tokens=3)
OTHER = [{"type": "text", "text": "Other rules. " * 20, "cache_control": {"type": "ephemeral"}}]


def held_by_a_provider_batch(store: Store) -> tuple[str, int]:
    """A batch-lane batch of two groups (and a request alone), its leaders answered, its
    followers taken into a provider batch; (batch id, provider batch row id)."""
    lines = [
        cached("lead", "q0"),
        cached("f1", "q1"),
        cached("other-lead", "q2", OTHER),
        cached("f2", "q3"),
        cached("other-f1", "q4", OTHER),
        cached("alone", "q5", [{**OTHER[0], "text": "Alone."}]),
    ]
    batch_id = put(store, lines, lane="batch")
    # The leaders' markers say "1h" (the batch lane's TTL): their writes are 1-hour ones.
    assert sorted(answer(store, batch_id, usage=LEADER_USAGE)) == ["lead", "other-lead"]
    intent = store.provider_batches.take(
        batch_id=batch_id, endpoint="simulator", max_requests=100, max_bytes=10**6, now=NOW
    )
    assert isinstance(intent, ProviderIntent)
    return batch_id, intent.row_id


def test_the_groups_a_provider_batch_holds_are_found_with_their_leaders_answer(
    store: Store,
) -> None:
    batch_id, row_id = held_by_a_provider_batch(store)

    groups = store.cache_warmth.held_groups([row_id])

    assert [g.batch_id for g in groups] == [batch_id, batch_id]
    assert [g.warm_since for g in groups] == [NOW, NOW]
    assert [g.refreshes for g in groups] == [0, 0]
    # The leaders' 1-hour cache writes, as their results keep them (LEADER_USAGE).
    assert [(g.leader_write_tokens, g.tracked) for g in groups] == [(3, False), (3, False)]
    texts = [g.params_json for g in groups]
    assert '"ttl":"1h"' in texts[0] and "Shared rules." in texts[0]
    assert "Other rules." in texts[1]
    assert store.cache_warmth.held_groups([]) == []
    assert store.cache_warmth.held_groups([row_id + 1]) == []


def test_a_refresh_moves_the_warm_time_and_adds_its_tokens_across_restarts(
    db_url: str, store: Store
) -> None:
    _, row_id = held_by_a_provider_batch(store)
    first, second = store.cache_warmth.held_groups([row_id])
    later = NOW + timedelta(minutes=48)
    store.cache_warmth.track(first, one_hour_write=True)
    store.cache_warmth.track(first, one_hour_write=True)  # once only

    assert store.cache_warmth.take_refresh(first, now=later)
    # Another worker that read the group before the take does not take it again.
    assert not store.cache_warmth.take_refresh(first, now=later)
    # The refresh wrote part of the prefix again, at the leader's 1-hour TTL.
    rewrote = Usage(12, 1, 40, 240, cache_creation_1h_input_tokens=40)
    store.cache_warmth.record_refresh(first, now=later, usage=rewrote)
    (again, _) = store.cache_warmth.held_groups([row_id])
    failed_at = later + timedelta(minutes=48)
    assert store.cache_warmth.take_refresh(again, now=failed_at)
    store.cache_warmth.record_refresh(again, now=failed_at, usage=None)
    reopened = Store.open(db_url)
    try:
        found = reopened.cache_warmth.held_groups([row_id])
        totals = reopened.cache_warmth.totals(first.batch_id)
    finally:
        reopened.close()

    # The unanswered refresh counts as sent and failed, and puts the warm time back.
    assert [g.warm_since for g in found] == [later, NOW]
    assert [g.refreshes for g in found] == [2, 0]
    assert [g.tracked for g in found] == [True, False]
    (model,) = totals.models
    assert (model.groups, model.refreshes, model.failed) == (1, 2, 1)
    assert model.usage == rewrote
    assert model.leader_write_1h_tokens == 3
    assert totals.refreshes == 2
    assert second.leader_id != first.leader_id


def test_provider_batches_take_a_groups_followers_together_then_the_others_in_line_order(
    store: Store,
) -> None:
    # Lines interleave the groups: in line order, every provider batch of two would hold
    # followers of both groups.
    lines = [
        cached("lead", "q0"),
        cached("other-lead", "q1", OTHER),
        cached("alone", "q2", [{**OTHER[0], "text": "Alone."}]),
        cached("f1", "q3"),
        cached("other-f1", "q4", OTHER),
        cached("f2", "q5"),
        cached("other-f2", "q6", OTHER),
        cached("f3", "q7"),
    ]
    batch_id = put(store, lines, lane="batch")
    assert sorted(answer(store, batch_id)) == ["lead", "other-lead"]

    taken: list[list[str]] = []
    while True:
        intent = store.provider_batches.take(
            batch_id=batch_id, endpoint="simulator", max_requests=2, max_bytes=10**6, now=NOW
        )
        if intent is None:
            break
        assert isinstance(intent, ProviderIntent)
        taken.append([json.loads(line)["custom_id"] for line in intent.lines])

    assert taken == [["f1", "f2"], ["f3", "other-f1"], ["other-f2", "alone"]]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A second view of the store's database, to read the stored params."""
    opened = create_engine(db_url)
    yield opened
    opened.dispose()


def stored_ttls(engine: Engine, batch_id: str) -> dict[str, str | None]:
    """Each request's breakpoint TTL as stored (None: none written)."""
    found = rows(engine, "SELECT custom_id, params FROM requests WHERE batch_id = :b", b=batch_id)
    return {
        row["custom_id"]: json.loads(row["params"])["system"][0]["cache_control"].get("ttl")
        for row in found
    }


AUTO_LINES = [
    cached("lead", "q0"),
    cached("f1", "q1"),
    cached("other-lead", "q2", OTHER),
    cached("f2", "q3"),
    cached("other-f1", "q4", OTHER),
    cached("alone", "q5", [{**OTHER[0], "text": "Alone."}]),
]


def test_the_auto_lanes_move_to_the_batch_lane_gives_its_groups_the_one_hour_ttl(
    store: Store, engine: Engine
) -> None:
    batch_id = put(store, AUTO_LINES, lane="auto")
    assert set(stored_ttls(engine, batch_id).values()) == {None}

    moved = store.lanes.set_queued(batch_id, "batch")

    # The leaders stay in real time; every group member's breakpoint gets "1h", the request
    # of no group keeps its own, and nothing else changes.
    assert moved == 4
    ttls = stored_ttls(engine, batch_id)
    assert ttls == {
        "lead": "1h",
        "f1": "1h",
        "other-lead": "1h",
        "f2": "1h",
        "other-f1": "1h",
        "alone": None,
    }
    found = rows(
        engine, "SELECT params FROM requests WHERE batch_id = :b AND custom_id = 'f1'", b=batch_id
    )
    params = json.loads(found[0]["params"])
    assert params["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert params["messages"] == AUTO_LINES[1]["params"]["messages"]


def test_keep_and_a_leader_already_sent_leave_the_ttl_as_written(
    store: Store, engine: Engine
) -> None:
    kept = put(store, AUTO_LINES, lane="auto", cache_ttl="keep")
    assert store.lanes.set_queued(kept, "batch") == 4
    assert set(stored_ttls(engine, kept).values()) == {None}

    # A later run's move: the leaders answered in real time (their entries are written with
    # their own TTL), so their followers keep it too.
    answered = put(store, AUTO_LINES, lane="auto")
    assert sorted(answer(store, answered)) == ["alone", "lead", "other-lead"]
    assert store.lanes.set_queued(answered, "batch") == 3
    assert set(stored_ttls(engine, answered).values()) == {None}
    # Back to real time changes nothing either.
    fresh = put(store, AUTO_LINES, lane="auto")
    assert store.lanes.set_queued(fresh, "realtime") == 0
    assert set(stored_ttls(engine, fresh).values()) == {None}
