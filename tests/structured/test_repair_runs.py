"""Answers that do not match their schema are repaired: whole runs of the dispatcher against
the in-process simulator (virtual time), on SQLite and Postgres.

The simulator's ``[[sim:invalid_output=1]]`` breaks every structured answer of a request that
carries it. :class:`RepairsAnsweredWell` is a server in front of it that drops the directive
from a repair send (a request with an assistant turn): the first answer is broken, every
repair answered right, so what a run must end with is known exactly. The answers are checked
with the jsonschema library (the oracle), not with batchrun's reading of them.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import select

from batchrun.input.ingest import submit_requests
from batchrun.simulator import create_app
from batchrun.store import tables as t
from batchrun.store.store import Store
from batchrun.structured.repair import INVALID_OUTPUT_ERROR_TYPE
from batchrun.structured.schemas import ask_for
from tests.conftest import jsonl
from tests.dispatch.helpers import dispatch, run_dispatcher
from tests.structured.servers import (
    BROKEN,
    Receive,
    RepairsAnsweredWell,
    Scope,
    Send,
    read_body,
    replay,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["category", "priority", "summary"],
    "properties": {
        "category": {"enum": ["billing", "bug", "other"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 80},
    },
}


def structured_batch(
    store: Store, rows: list[str], *, mode: str = "native", repair: int = 1
) -> str:
    """A batch of one request per row text, each asking for SCHEMA the ``mode`` way."""
    lines = []
    for index, text in enumerate(rows):
        params = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "messages": [{"role": "user", "content": f"ticket {index}: {text}"}],
        }
        lines.append({"custom_id": f"t{index}", "params": ask_for(params, SCHEMA, mode)})  # type: ignore[arg-type]
    return submit_requests(
        store,
        io.BytesIO(jsonl(lines)),
        source="tickets.jsonl",
        endpoint="simulator",
        now=datetime.now(UTC),
        repair_limit=repair,
    )


def answer_of(message: dict[str, Any], mode: str) -> Any:
    if mode == "tool":
        (call,) = [b for b in message["content"] if b["type"] == "tool_use"]
        return call["input"]
    return json.loads("".join(b["text"] for b in message["content"] if b["type"] == "text"))


def matches(message: dict[str, Any], mode: str) -> bool:
    """Whether ``message``'s answer matches SCHEMA, by the jsonschema library."""
    try:
        value = answer_of(message, mode)
    except ValueError:
        return False
    return bool(Draft202012Validator(SCHEMA).is_valid(value))


def final_rows(store: Store, batch_id: str) -> dict[str, Any]:
    with store.engine.connect() as conn:
        r, q = t.results.c, t.requests.c
        return {
            row.custom_id: row
            for row in conn.execute(
                select(
                    r.custom_id,
                    r.result_type,
                    r.error_type,
                    r.error_message,
                    r.body,
                    r.raw_body,
                    r.attempts,
                    r.input_tokens,
                    r.output_tokens,
                    q.repairs,
                )
                .join(t.requests, q.id == r.request_id)
                .where(r.batch_id == batch_id)
            )
        }


def turn_rows(store: Store, batch_id: str) -> list[Any]:
    with store.engine.connect() as conn:
        a = t.answer_turns.c
        return list(
            conn.execute(
                select(t.answer_turns).where(a.batch_id == batch_id).order_by(a.request_id, a.turn)
            )
        )


@pytest.mark.parametrize("mode", ["native", "tool"])
async def test_broken_answers_are_repaired_once_and_every_send_is_counted_and_costed(
    store: Store, mode: str
) -> None:
    simulator = create_app()
    rows = [f"{BROKEN} printer on fire" if i % 3 == 0 else "refund please" for i in range(12)]
    batch_id = structured_batch(store, rows, mode=mode, repair=1)

    report = await dispatch(store, batch_id, RepairsAnsweredWell(simulator))

    broken = sum(BROKEN in row for row in rows)
    assert simulator.stats.received == len(rows) + broken == report.sent
    assert report.repaired == broken
    finals = final_rows(store, batch_id)
    for row in finals.values():
        assert row.result_type == "succeeded"
        assert matches(json.loads(row.body), mode)
    turns = turn_rows(store, batch_id)
    assert len(turns) == broken
    for turn in turns:
        assert turn.turn == 1 and not turn.repair_send
        assert json.loads(turn.errors), "the errors the repair showed are kept"
        assert not matches(json.loads(turn.body), mode)
    repaired = {row.custom_id for row in finals.values() if row.repairs}
    assert len(repaired) == broken
    assert all(finals[c].attempts == 2 for c in repaired)
    # Every token the simulator billed is in the batch's counters: the broken answers' too.
    batch = store.batches.get(batch_id)
    assert batch.tokens.input_tokens == simulator.stats.input_tokens_total
    assert batch.tokens.output_tokens == simulator.stats.output_tokens_total
    usage = store.usage.by_model([batch_id])[batch_id]
    assert sum(m.input_tokens for m in usage) == simulator.stats.input_tokens_total
    # The repair sends: counted, with their own tokens (the results of the repaired rows).
    sends = store.repairs.sends_of([batch_id])[batch_id]
    assert sum(m.requests for m in sends) == broken
    assert sum(m.output_tokens for m in sends) == sum(finals[c].output_tokens for c in repaired)


async def test_a_repair_shows_the_model_its_answer_and_the_errors(store: Store) -> None:
    simulator = create_app()
    seen: list[dict[str, Any]] = []

    async def spy(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        seen.append(json.loads(body))
        await RepairsAnsweredWell(simulator)(scope, replay(body), send)

    batch_id = structured_batch(store, [f"{BROKEN} one"], mode="tool")
    await dispatch(store, batch_id, spy)

    first, repair = seen
    assert repair["messages"][0] == first["messages"][0]
    assistant, user = repair["messages"][1:]
    (call,) = [b for b in assistant["content"] if b["type"] == "tool_use"]
    result, ask = user["content"]
    assert result["type"] == "tool_result" and result["tool_use_id"] == call["id"]
    assert result["is_error"] is True and result["content"].startswith("- at $")
    assert ask["type"] == "text" and "answer" in ask["text"]
    (turn,) = turn_rows(store, batch_id)
    assert json.loads(turn.body)["content"] == assistant["content"]
    assert result["content"] == "\n".join(f"- {e}" for e in json.loads(turn.errors))
    assert repair["tool_choice"] == first["tool_choice"] and repair["tools"] == first["tools"]


async def test_without_repairs_a_broken_answer_ends_invalid_output_with_the_answer_kept(
    store: Store,
) -> None:
    simulator = create_app()
    batch_id = structured_batch(store, [f"{BROKEN} a", "b"], repair=0)

    await dispatch(store, batch_id, simulator)

    finals = final_rows(store, batch_id)
    assert simulator.stats.received == 2
    assert finals["t1"].result_type == "succeeded"
    broken = finals["t0"]
    assert broken.result_type == "errored" and broken.error_type == INVALID_OUTPUT_ERROR_TYPE
    assert broken.error_message.startswith("invalid_output: the answer does not match")
    assert "no repair is allowed" in broken.error_message
    assert json.loads(broken.raw_body)["type"] == "message", "the last answer is kept"
    assert json.loads(broken.body)["error"]["message"] == broken.error_message
    assert broken.input_tokens is not None, "its usage is kept and costed"
    assert turn_rows(store, batch_id) == []
    assert store.batches.get(batch_id).tokens.input_tokens == simulator.stats.input_tokens_total


@pytest.mark.parametrize(("mode", "repair"), [("native", 2), ("tool", 1)])
async def test_an_answer_that_stays_broken_ends_invalid_output_after_exactly_n_plus_1_sends(
    store: Store, mode: str, repair: int
) -> None:
    simulator = create_app()
    batch_id = structured_batch(store, [f"{BROKEN} x", f"{BROKEN} y"], mode=mode, repair=repair)

    report = await dispatch(store, batch_id, simulator)

    assert simulator.stats.received == 2 * (repair + 1) == report.sent
    finals = final_rows(store, batch_id)
    for row in finals.values():
        assert row.result_type == "errored" and row.error_type == INVALID_OUTPUT_ERROR_TYPE
        assert f"after {repair} repair" in row.error_message
        assert row.attempts == repair + 1 and row.repairs == repair
        assert json.loads(row.raw_body)["type"] == "message"
    turns = turn_rows(store, batch_id)
    assert [turn.turn for turn in turns] == list(range(1, repair + 1)) * 2
    assert [bool(turn.repair_send) for turn in turns] == [n > 1 for n in range(1, repair + 1)] * 2
    batch = store.batches.get(batch_id)
    assert batch.tokens.output_tokens == simulator.stats.output_tokens_total
    sends = store.repairs.sends_of([batch_id])[batch_id]
    assert sum(m.requests for m in sends) == 2 * repair
    errors = {e.error_type: e.count for e in store.batches.stats(batch_id).errors}
    assert errors == {INVALID_OUTPUT_ERROR_TYPE: 2}


async def test_answers_to_requests_that_ask_for_no_schema_are_not_checked(store: Store) -> None:
    simulator = create_app()
    lines = [
        {
            "custom_id": "plain",
            "params": {
                "model": "claude-sonnet-4-5",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": "not JSON, and fine"}],
            },
        }
    ]
    batch_id = submit_requests(
        store,
        io.BytesIO(jsonl(lines)),
        source="plain.jsonl",
        endpoint="simulator",
        now=datetime.now(UTC),
    )

    await dispatch(store, batch_id, simulator)

    assert final_rows(store, batch_id)["plain"].result_type == "succeeded"
    assert simulator.stats.received == 1


async def test_a_crash_between_the_broken_answer_and_its_repair_resumes_with_the_repair(
    store: Store,
) -> None:
    """The broken answer is committed with the request back in the queue; the run stops
    there (as a kill -9 would leave it, nothing in flight). The next run sends the repair,
    not the original request again, and the first answer's cost is kept."""
    simulator = create_app()
    batch_id = structured_batch(store, [f"{BROKEN} once"], repair=1)
    stopped: list[bool] = []

    async def stop_after_the_first_answer(dispatcher: Any) -> None:
        # Look for the broken answer in the store every 10 ms of virtual time, then stop the
        # run at once.
        while not turn_rows(store, batch_id):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        dispatcher.request_stop("test")
        dispatcher.request_stop("test")
        stopped.append(True)

    await run_dispatcher(
        store, batch_id, RepairsAnsweredWell(simulator), during=stop_after_the_first_answer
    )
    after_first = store.batches.get(batch_id)
    assert stopped and simulator.stats.received in (1, 2)
    if simulator.stats.received == 1:
        assert after_first.counts.processing == 1
        assert after_first.tokens.input_tokens == simulator.stats.input_tokens_total

    await dispatch(store, batch_id, RepairsAnsweredWell(simulator))

    assert simulator.stats.received == 2, "the original request is never sent again"
    (row,) = final_rows(store, batch_id).values()
    assert row.result_type == "succeeded" and row.attempts == 2 and row.repairs == 1
    assert store.batches.get(batch_id).tokens.input_tokens == simulator.stats.input_tokens_total


async def test_a_repair_send_that_fails_transiently_is_retried_as_a_repair(store: Store) -> None:
    # The first reception of each distinct body is a 529: the original request and its
    # repair each fail once, then go through.
    simulator = create_app()
    batch_id = structured_batch(store, [f"[[sim:status=529:times=1]] {BROKEN} busy"])

    report = await dispatch(store, batch_id, RepairsAnsweredWell(simulator))

    assert simulator.stats.received == 4 == report.sent
    assert report.retried == 2 and report.repaired == 1
    (row,) = final_rows(store, batch_id).values()
    assert row.result_type == "succeeded" and row.attempts == 4 and row.repairs == 1
    assert matches(json.loads(row.body), "native")
    assert len(turn_rows(store, batch_id)) == 1


async def test_a_request_waiting_for_its_repair_stays_in_real_time_when_its_batch_moves_lanes(
    store: Store,
) -> None:
    from batchrun.records import AnswerTurn

    batch_id = structured_batch(store, ["a", "b"], repair=1)
    now = datetime.now(UTC)
    first, second = store.leases.claim(
        owner="w", batch_ids=[batch_id], limit=2, now=now, lease_s=60
    )
    store.results.record(
        owner="w",
        now=now,
        unsent=[second.id],
        turns=[
            AnswerTurn(
                request_id=first.id,
                batch_id=batch_id,
                turn=1,
                repair_send=False,
                body=json.dumps({"type": "message", "content": []}),
                errors=("the answer has no text",),
                completed_at=now,
            )
        ],
    )

    assert store.lanes.set_queued(batch_id, "batch") == 1
    with store.engine.connect() as conn:
        q = t.requests.c
        lanes = dict(conn.execute(select(q.id, q.lane).where(q.batch_id == batch_id)).all())
    assert lanes == {first.id: "realtime", second.id: "batch"}
    (turn,) = store.repairs.turns_of(first.id)
    assert turn["errors"] == ["the answer has no text"] and turn["turn"] == 1
    assert store.repairs.last_turn(first.id) == (
        json.dumps({"type": "message", "content": []}),
        ("the answer has no text",),
    )
