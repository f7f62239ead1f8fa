"""The budget guard alone: reservations, answers, and other workers' spending."""

from __future__ import annotations

import pytest

from batchrun.config.prices import CostTotal, PriceTable
from batchrun.ops.budget import BudgetGuard
from batchrun.records import Succeeded, Usage

HAIKU = "claude-3-haiku-20240307"


def answer(output_tokens: int) -> Succeeded:
    return Succeeded(
        body="{}",
        model=HAIKU,
        stop_reason="end_turn",
        usage=Usage(0, output_tokens),
        request_id=None,
    )


def test_requests_in_flight_reserve_their_worst_case() -> None:
    # $1.25 per million output tokens: 400,000 max_tokens may cost $0.50.
    guard = BudgetGuard(PriceTable(), {"b": 1.0}, {})

    first = guard.admit(
        request_id=1, batch_id="b", model=HAIKU, input_estimate=0, max_tokens=400_000
    )
    second = guard.admit(
        request_id=2, batch_id="b", model=HAIKU, input_estimate=0, max_tokens=400_000
    )
    third = guard.admit(
        request_id=3, batch_id="b", model=HAIKU, input_estimate=0, max_tokens=400_000
    )

    assert first is None and second is None
    assert third is not None
    assert "$1.00 reached: when the next request was due, $0.00 was spent, $1.00 was reserved" in (
        third
    )
    assert "`batchrun run b --max-cost USD`" in third
    # The answer used 40,000 tokens ($0.05): the reservation is replaced by the real cost.
    guard.settle(1, HAIKU, answer(40_000))
    assert guard.spent_usd("b") == pytest.approx(0.05)
    # $0.05 spent + $0.50 in flight leaves $0.45: 360,000 tokens fit, 400,000 do not.
    assert (
        guard.admit(request_id=4, batch_id="b", model=HAIKU, input_estimate=0, max_tokens=400_000)
        is not None
    )
    assert (
        guard.admit(request_id=5, batch_id="b", model=HAIKU, input_estimate=0, max_tokens=360_000)
        is None
    )


def test_a_batch_without_a_budget_is_never_refused() -> None:
    guard = BudgetGuard(PriceTable(), {"b": None}, {})

    assert guard.batch_ids == []
    assert (
        guard.admit(
            request_id=1,
            batch_id="b",
            model="unknown-model",
            input_estimate=10**9,
            max_tokens=10**9,
        )
        is None
    )
    assert guard.spent_usd("b") is None


def test_budget_refresh_adds_what_other_workers_spent() -> None:
    guard = BudgetGuard(PriceTable(), {"b": 1.0}, {"b": CostTotal(0.25)})
    assert (
        guard.admit(request_id=1, batch_id="b", model=HAIKU, input_estimate=0, max_tokens=0) is None
    )
    guard.settle(1, HAIKU, object())
    assert guard.spent_usd("b") == 0.25

    guard.begin_refresh()
    # Meanwhile the database says 0.9 was spent (others spent 0.65).
    guard.refresh({"b": CostTotal(0.9)})

    assert guard.spent_usd("b") == pytest.approx(0.9)
    refusal = guard.admit(
        request_id=2, batch_id="b", model=HAIKU, input_estimate=0, max_tokens=100_000
    )
    assert refusal is not None and "max-cost $1.00 reached" in refusal
    assert (
        guard.admit(request_id=3, batch_id="other", model="x", input_estimate=1, max_tokens=1)
        is None
    )
