"""A row of the exports counts every answer its request paid for: an answer that did not
match its schema (an ``answer_turns`` row) is in the row's tokens and cost at its own model
and lane's share, while the request waits for its repair and after; ``repair_sends`` counts
the repair sends answered. Written through the store as a worker writes, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from batchrun.config.prices import ModelPrice, PriceTable, cost_of
from batchrun.export.flat import flat_values
from batchrun.records import AnswerTurn, FinishedRequest, Usage
from batchrun.store.store import Store
from tests.conftest import request_line, submit

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SONNET, HAIKU = "claude-sonnet-4-5", "claude-haiku-4-5"
PRICES = PriceTable(
    {SONNET: ModelPrice(3.0, 15.0, 3.75, 0.3), HAIKU: ModelPrice(1.0, 5.0, 1.25, 0.1)}
)
BROKEN = Usage(100, 10, 5, 7)


def _claim(store: Store, batch_id: str) -> dict[str, int]:
    claimed = store.leases.claim(owner="w1", batch_ids=[batch_id], limit=10, now=NOW, lease_s=60)
    return {item.custom_id: item.id for item in claimed}


def _answer(
    request_id: int, batch_id: str, custom_id: str, usage: Usage, *, repair_send: bool = False
) -> FinishedRequest:
    return FinishedRequest(
        request_id=request_id,
        batch_id=batch_id,
        custom_id=custom_id,
        result_type="succeeded",
        attempts=1,
        completed_at=NOW,
        model=SONNET,
        usage=usage,
        body="{}",
        lane="realtime",
        repair_send=repair_send,
    )


def _rows(store: Store, batch_id: str) -> dict[str, dict[str, Any]]:
    details = [detail for detail, _ in store.results.iter_joined(batch_id)]
    return {record["custom_id"]: record for record in flat_values(details, PRICES)}


def _cost(model: str, usage: Usage, share: float) -> float:
    price = PRICES.price_for(model)
    assert price is not None
    return share * price.cost_usd(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens,
    )


def test_a_row_counts_its_repaired_answer_at_its_own_model_and_share_before_and_after_the_repair(
    store: Store,
) -> None:
    batch_id = submit(store, [request_line("a"), request_line("b")])
    ids = _claim(store, batch_id)
    # a's answer (from another model, in a provider batch at half price) did not match its
    # schema: kept as a turn, a goes back for its repair; b is answered.
    turn = AnswerTurn(
        request_id=ids["a"],
        batch_id=batch_id,
        turn=1,
        repair_send=False,
        body="{}",
        errors=("at $: 'category' is a required property",),
        completed_at=NOW,
        model=HAIKU,
        usage=BROKEN,
        lane="batch",
        cost_factor=0.5,
    )
    store.results.record(
        owner="w1", now=NOW, turns=[turn], finished=[_answer(ids["b"], batch_id, "b", Usage(3, 4))]
    )

    waiting = _rows(store, batch_id)
    # Waiting for its repair, a has no result, but it paid for the broken answer.
    assert [waiting["a"][name] for name in ("input_tokens", "output_tokens")] == [100, 10]
    assert waiting["a"]["cache_read_input_tokens"] == 7
    assert waiting["a"]["cost_usd"] == pytest.approx(_cost(HAIKU, BROKEN, 0.5), abs=1e-8)
    assert waiting["a"]["repair_sends"] == 0, "the repair is not answered yet"
    assert (waiting["b"]["input_tokens"], waiting["b"]["repair_sends"]) == (3, 0)
    assert waiting["b"]["cost_usd"] == pytest.approx(_cost(SONNET, Usage(3, 4), 1.0), abs=1e-8)

    # The repair is sent in real time and answered.
    repaired = _claim(store, batch_id)
    assert list(repaired) == ["a"]
    fixed = Usage(50, 20)
    store.results.record(
        owner="w1",
        now=NOW,
        finished=[_answer(ids["a"], batch_id, "a", fixed, repair_send=True)],
    )

    rows = _rows(store, batch_id)
    assert (rows["a"]["input_tokens"], rows["a"]["output_tokens"]) == (150, 30)
    assert rows["a"]["cache_creation_input_tokens"] == 5
    assert rows["a"]["cost_usd"] == pytest.approx(
        _cost(HAIKU, BROKEN, 0.5) + _cost(SONNET, fixed, 1.0), abs=1e-8
    )
    assert rows["a"]["repair_sends"] == 1
    # The rows add up to the batch's cost, read from its counters (what status shows).
    total = cost_of(store.usage.by_model([batch_id])[batch_id], PRICES)
    assert sum(row["cost_usd"] for row in rows.values()) == pytest.approx(total.usd, abs=1e-8)
