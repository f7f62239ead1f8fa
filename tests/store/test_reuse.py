"""Reuse and prompt-cache groups in the store, on both backends: stored answers copied at
submit (``--reuse``), duplicates waiting for their original, leaders and followers."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from batchrun.input.ingest import submit_requests
from batchrun.records import FinishedRequest, Usage
from batchrun.store import batch_rows
from batchrun.store.store import Store
from tests.conftest import jsonl, request_line

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
LEASE_S = 60.0
SYSTEM = [{"type": "text", "text": "Shared rules. " * 20, "cache_control": {"type": "ephemeral"}}]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A second view of the store's database, to read columns the store does not return."""
    opened = create_engine(db_url)
    yield opened
    opened.dispose()


def put(
    store: Store,
    lines: list[dict[str, Any]],
    *,
    reuse: bool = False,
    lane: str = "realtime",
    now: datetime = NOW,
    cache_ttl: str = "auto",
) -> str:
    return submit_requests(
        store,
        io.BytesIO(jsonl(lines)),
        source="test.jsonl",
        endpoint="simulator",
        now=now,
        reuse=reuse,
        lane=lane,
        cache_ttl=cache_ttl,
    )


def rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(sql), params)]


def requests_of(engine: Engine, batch_id: str) -> dict[str, dict[str, Any]]:
    found = rows(
        engine,
        "SELECT id, custom_id, state, wait_for, copy_of, lane, attempts, params_digest "
        "FROM requests WHERE batch_id = :b ORDER BY line_no",
        b=batch_id,
    )
    return {row["custom_id"]: row for row in found}


def result_of(engine: Engine, request_id: int) -> dict[str, Any]:
    (found,) = rows(engine, "SELECT * FROM results WHERE request_id = :r", r=request_id)
    return found


# What answer() records for a succeeded request unless told.
ANSWER_USAGE = Usage(10, 5, 3, 7)


def answer(
    store: Store,
    batch_id: str,
    *,
    result_type: str = "succeeded",
    body: str = '{"type":"message","content":[{"type":"text","text":"hi"}]}',
    now: datetime = NOW,
    usage: Usage = ANSWER_USAGE,
) -> list[str]:
    """Claim what is claimable now and record every claimed request as ``result_type``
    (succeeded ones with ``usage``); returns the custom_ids claimed."""
    claimed = store.leases.claim(
        owner="w1", batch_ids=[batch_id], limit=100, now=now, lease_s=LEASE_S
    )
    store.results.record(
        owner="w1",
        now=now,
        finished=[
            FinishedRequest(
                request_id=request.id,
                batch_id=batch_id,
                custom_id=request.custom_id,
                result_type=result_type,
                attempts=1,
                completed_at=now,
                http_status=200 if result_type == "succeeded" else 400,
                model="claude-sonnet-4-5",
                stop_reason="end_turn" if result_type == "succeeded" else None,
                usage=usage if result_type == "succeeded" else None,
                error_type=None if result_type == "succeeded" else "invalid_request_error",
                latency_ms=120,
                request_ref=f"req_{request.custom_id}",
                body=body if result_type == "succeeded" else '{"type":"error"}',
                endpoint="simulator",
            )
            for request in claimed
        ],
    )
    return [request.custom_id for request in claimed]


# -- reuse across batches -----------------------------------------------------------------


def test_a_reused_request_succeeds_at_once_with_a_copy_of_the_stored_result(
    store: Store, engine: Engine
) -> None:
    first = put(store, [request_line("a", "question one"), request_line("b", "question two")])
    answer(store, first, usage=Usage(10, 5, 3, 7, cache_creation_1h_input_tokens=2))

    second = put(
        store,
        [request_line("x", "question one"), request_line("y", "question two")],
        reuse=True,
        now=LATER,
    )

    batch = store.batches.get(second)
    assert batch.counts.succeeded == 2
    assert batch.processing_status == "ended"
    assert batch.ended_at == LATER
    old, new = requests_of(engine, first), requests_of(engine, second)
    source, copy = result_of(engine, old["a"]["id"]), result_of(engine, new["x"]["id"])
    assert copy["body"] == source["body"]
    assert source["cache_creation_1h_input_tokens"] == 2
    for column in (
        "result_type",
        "http_status",
        "model",
        "stop_reason",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation_1h_input_tokens",
        "request_ref",
        "endpoint",
        "lane",
    ):
        assert copy[column] == source[column], column
    assert copy["custom_id"] == "x"
    assert copy["batch_id"] == second
    assert copy["reused_from"] == first
    assert copy["cost_factor"] == 0
    assert copy["attempts"] == 0 and new["x"]["attempts"] == 0
    assert copy["latency_ms"] is None
    assert store.batches.stats(second).reused == 2
    assert store.batches.stats(first).reused == 0
    assert [row.reused_from for row in store.results.iter_details(second)] == [first, first]
    assert store.leases.claim(owner="w", batch_ids=[second], limit=10, now=LATER, lease_s=60) == []


def test_without_reuse_the_same_params_are_queued_and_sent_again(store: Store) -> None:
    first = put(store, [request_line("a", "question one")])
    answer(store, first)

    second = put(store, [request_line("a", "question one")], now=LATER)

    assert store.batches.get(second).counts.processing == 1
    assert store.batches.stats(second).reused == 0


def test_only_succeeded_results_are_reused_and_the_lowest_request_id_is_the_source(
    store: Store, engine: Engine
) -> None:
    failed = put(store, [request_line("a", "question one")])
    answer(store, failed, result_type="errored")
    older = put(store, [request_line("a", "question one")])
    answer(store, older, body='{"type":"message","id":"older"}')
    newer = put(store, [request_line("a", "question one")])
    answer(store, newer, body='{"type":"message","id":"newer"}')

    reusing = put(
        store, [request_line("a", "question one"), request_line("b", "other")], reuse=True
    )

    found = requests_of(engine, reusing)
    assert found["a"]["state"] == "succeeded"
    assert found["b"]["state"] == "queued"
    copied = result_of(engine, found["a"]["id"])
    assert copied["body"] == '{"type":"message","id":"older"}'
    assert copied["reused_from"] == older
    assert store.batches.get(reusing).processing_status == "in_progress"


def test_params_that_differ_only_in_key_order_are_reused_but_another_model_is_not(
    store: Store, engine: Engine
) -> None:
    line = request_line("a", "question one")
    first = put(store, [line])
    answer(store, first)
    params = line["params"]
    reordered = {"custom_id": "a", "params": dict(reversed(list(params.items())))}
    other_model = request_line("b", "question one", model="claude-opus-4-1")

    second = put(store, [reordered, other_model], reuse=True)

    found = requests_of(engine, second)
    assert found["a"]["state"] == "succeeded"
    assert found["b"]["state"] == "queued"
    assert found["a"]["params_digest"] == requests_of(engine, first)["a"]["params_digest"]


def test_every_request_gets_a_params_digest_without_reuse_too(store: Store, engine: Engine) -> None:
    batch_id = put(store, [request_line("a"), request_line("b", "other")])

    digests = [row["params_digest"] for row in requests_of(engine, batch_id).values()]

    assert all(digest is not None and len(digest) == 64 for digest in digests)
    assert digests[0] != digests[1]


# -- duplicates within a batch ------------------------------------------------------------


def test_duplicates_wait_for_their_first_and_take_its_result_when_it_succeeds(
    store: Store, engine: Engine
) -> None:
    lines = [
        request_line("a", "same"),
        request_line("b", "different"),
        request_line("c", "same"),
        request_line("d", "same"),
    ]
    batch_id = put(store, lines, reuse=True)
    found = requests_of(engine, batch_id)
    first = found["a"]["id"]
    assert (found["c"]["copy_of"], found["c"]["wait_for"]) == (first, first)
    assert (found["d"]["copy_of"], found["d"]["wait_for"]) == (first, first)
    assert found["a"]["copy_of"] is None and found["b"]["copy_of"] is None

    assert answer(store, batch_id) == ["a", "b"]

    batch = store.batches.get(batch_id)
    assert batch.counts.succeeded == 4
    assert batch.processing_status == "ended"
    original = result_of(engine, first)
    for custom_id in ("c", "d"):
        copy = result_of(engine, found[custom_id]["id"])
        assert copy["body"] == original["body"]
        assert copy["input_tokens"] == original["input_tokens"]
        assert copy["reused_from"] == batch_id
        assert copy["cost_factor"] == 0
        assert copy["attempts"] == 0
    assert store.batches.stats(batch_id).reused == 2


def test_duplicates_of_a_request_that_errored_are_sent_themselves(
    store: Store, engine: Engine
) -> None:
    batch_id = put(store, [request_line("a", "same"), request_line("c", "same")], reuse=True)

    assert answer(store, batch_id, result_type="errored") == ["a"]
    assert answer(store, batch_id) == ["c"]

    found = requests_of(engine, batch_id)
    assert found["c"]["state"] == "succeeded"
    assert result_of(engine, found["c"]["id"])["reused_from"] is None
    assert result_of(engine, found["c"]["id"])["attempts"] == 1
    assert store.batches.get(batch_id).processing_status == "ended"


def test_queued_duplicates_are_canceled_with_the_batch(store: Store) -> None:
    batch_id = put(store, [request_line("a", "same"), request_line("c", "same")], reuse=True)
    claimed = store.leases.claim(
        owner="w1", batch_ids=[batch_id], limit=10, now=NOW, lease_s=LEASE_S
    )
    assert [request.custom_id for request in claimed] == ["a"]

    store.lifecycle.cancel(batch_id, NOW)

    states = {row.custom_id: row.state for row in store.results.iter_rows(batch_id)}
    assert states == {"a": "running", "c": "canceled"}


def test_without_reuse_duplicates_are_sent_each(store: Store, engine: Engine) -> None:
    batch_id = put(store, [request_line("a", "same"), request_line("c", "same")])

    assert answer(store, batch_id) == ["a", "c"]
    assert all(row["copy_of"] is None for row in requests_of(engine, batch_id).values())


def test_reuse_and_duplicates_work_across_ingest_chunks(
    store: Store, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_rows, "INGEST_CHUNK_ROWS", 3)
    first = put(store, [request_line("old", "answered before")])
    answer(store, first)
    lines = [request_line(f"r{i}", f"question {i % 4}") for i in range(10)]
    lines.append(request_line("again", "answered before"))

    batch_id = put(store, lines, reuse=True)

    found = requests_of(engine, batch_id)
    firsts = {i: found[f"r{i}"]["id"] for i in range(4)}
    for i in range(4, 10):
        assert found[f"r{i}"]["copy_of"] == firsts[i % 4]
    assert found["again"]["state"] == "succeeded"
    assert answer(store, batch_id) == ["r0", "r1", "r2", "r3"]
    assert store.batches.get(batch_id).counts.succeeded == 11


# -- prompt-cache groups ------------------------------------------------------------------


def cached(custom_id: str, text: str, system: list[dict[str, Any]] = SYSTEM) -> dict[str, Any]:
    return request_line(custom_id, text, system=system)


def test_followers_of_a_cache_prefix_wait_for_its_leader(store: Store, engine: Engine) -> None:
    other = [{**SYSTEM[0], "text": "Other rules."}]
    lines = [
        request_line("plain", "no breakpoint"),
        cached("lead", "q0"),
        cached("f1", "q1"),
        cached("alone", "q2", other),
        cached("f2", "q3"),
    ]
    batch_id = put(store, lines)

    found = requests_of(engine, batch_id)
    leader = found["lead"]["id"]
    assert found["f1"]["wait_for"] == leader and found["f2"]["wait_for"] == leader
    assert found["lead"]["wait_for"] is None
    assert found["alone"]["wait_for"] is None
    assert found["plain"]["wait_for"] is None
    assert answer(store, batch_id) == ["plain", "lead", "alone"]
    assert answer(store, batch_id) == ["f1", "f2"]


def test_followers_go_once_their_leader_failed_too(store: Store) -> None:
    batch_id = put(store, [cached("lead", "q0"), cached("f1", "q1"), cached("f2", "q2")])

    assert answer(store, batch_id, result_type="errored") == ["lead"]
    assert answer(store, batch_id) == ["f1", "f2"]


def test_a_duplicate_keeps_waiting_for_its_original_only(store: Store, engine: Engine) -> None:
    lines = [cached("lead", "q0"), cached("f1", "q1"), cached("dup", "q1"), cached("f2", "q2")]

    batch_id = put(store, lines, reuse=True)

    found = requests_of(engine, batch_id)
    assert found["f1"]["wait_for"] == found["lead"]["id"]
    assert found["f2"]["wait_for"] == found["lead"]["id"]
    assert found["dup"]["copy_of"] == found["dup"]["wait_for"] == found["f1"]["id"]


def test_a_reused_request_does_not_lead_its_group(store: Store, engine: Engine) -> None:
    first = put(store, [cached("lead", "q0")])
    answer(store, first)

    batch_id = put(
        store, [cached("lead", "q0"), cached("f1", "q1"), cached("f2", "q2")], reuse=True
    )

    found = requests_of(engine, batch_id)
    assert found["lead"]["state"] == "succeeded" and found["lead"]["wait_for"] is None
    assert found["f1"]["wait_for"] is None
    assert found["f2"]["wait_for"] == found["f1"]["id"]


def test_groups_span_ingest_chunks(
    store: Store, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_rows, "INGEST_CHUNK_ROWS", 4)
    other = [{**SYSTEM[0], "text": "Other rules."}]
    lines = [cached(f"r{i}", f"q{i}", SYSTEM if i % 2 else other) for i in range(30)]

    batch_id = put(store, lines)

    found = requests_of(engine, batch_id)
    for i in range(2, 30):
        assert found[f"r{i}"]["wait_for"] == found[f"r{i % 2}"]["id"]


@pytest.mark.parametrize("chunk_rows", [1000, 1])
def test_in_the_batch_lane_a_leader_goes_in_real_time_alone(
    store: Store, engine: Engine, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    monkeypatch.setattr(batch_rows, "INGEST_CHUNK_ROWS", chunk_rows)
    other = [{**SYSTEM[0], "text": "Other rules."}]
    lines = [cached("lead", "q0"), cached("f1", "q1"), cached("alone", "q2", other)]

    batch_id = put(store, lines, lane="batch")

    lanes = {custom_id: row["lane"] for custom_id, row in requests_of(engine, batch_id).items()}
    assert lanes == {"lead": "realtime", "f1": "batch", "alone": "batch"}


def stored_params(engine: Engine, batch_id: str) -> dict[str, Any]:
    found = rows(engine, "SELECT custom_id, params FROM requests WHERE batch_id = :b", b=batch_id)
    return {row["custom_id"]: json.loads(row["params"]) for row in found}


@pytest.mark.parametrize("chunk_rows", [1000, 1])
def test_in_the_batch_lane_a_groups_breakpoints_get_the_one_hour_ttl_and_nothing_else_changes(
    store: Store, engine: Engine, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    monkeypatch.setattr(batch_rows, "INGEST_CHUNK_ROWS", chunk_rows)
    other = [{**SYSTEM[0], "text": "Other rules."}]
    tool = {"name": "t", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
    lines = [
        cached("lead", "q0"),
        cached("f1", "q1"),
        cached("alone", "q2", other),
        {**cached("tools", "q3"), "params": {**cached("tools", "q3")["params"], "tools": [tool]}},
        {**cached("tools2", "q4"), "params": {**cached("tools2", "q4")["params"], "tools": [tool]}},
    ]
    written = {line["custom_id"]: line["params"] for line in lines}

    auto = stored_params(engine, put(store, lines, lane="batch"))
    keep = stored_params(engine, put(store, lines, lane="batch", cache_ttl="keep"))
    realtime = stored_params(engine, put(store, lines))

    assert keep == written and realtime == written
    one_hour = {"type": "ephemeral", "ttl": "1h"}
    # A group of one is sent as written; a group's leader and followers get "1h" on every
    # breakpoint (a longer TTL may not follow a shorter one), and nothing else changes.
    assert auto["alone"] == written["alone"]
    for custom_id in ("lead", "f1", "tools", "tools2"):
        expected = json.loads(json.dumps(written[custom_id]))
        expected["system"][0]["cache_control"] = one_hour
        for block in expected.get("tools", []):
            block["cache_control"] = one_hour
        assert auto[custom_id] == expected
