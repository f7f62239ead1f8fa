"""Blocks and reservations in debt: what a take reserves when the buckets lack it, and when
each part of a block may be spent. Pure: times are passed in."""

from __future__ import annotations

import math

import pytest

from batchrun.limits.blocks import BLOCK_HORIZON_S, Block, block_costs, held_requests
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.keyrecord import KeyPolicy, KeyRecord, PendingChanges

# 10 a second, a bucket of 1 s (10), no ramp.
POLICY = KeyPolicy(configured=RateLimits(rpm=600), burst_s=1.0, ramp_s=0)


def test_a_reservation_the_buckets_lack_goes_into_debt_and_says_when_it_is_paid() -> None:
    record = KeyRecord()
    first = record.take({"rpm": 5.0}, POLICY, 0.0, reserve=True)  # a new bucket starts empty

    assert first.charged == {"rpm": 5.0}
    assert first.levels == {"rpm": 0.0}
    assert first.rates == {"rpm": pytest.approx(10.0)}
    # Queued behind the first: its debt of 5 is paid after 0.5 s, then its own 2 by 0.7 s.
    second = record.take({"rpm": 2.0}, POLICY, 0.0, reserve=True)
    assert second.levels == {"rpm": -5.0}
    assert second.wait_s == pytest.approx(0.7)
    # Without ``reserve`` the same take is refused and takes nothing.
    refused = record.take({"rpm": 2.0}, POLICY, 0.0)
    assert (refused.charged, refused.wait_s) == ({}, pytest.approx(0.9))


def test_a_paused_key_reserves_nothing() -> None:
    record = KeyRecord()
    record.take({"rpm": 1.0}, POLICY, 0.0, reserve=True)
    grant = record.take({"rpm": 3.0}, POLICY, 1.0, PendingChanges(pause_until=4.0), reserve=True)
    assert (grant.charged, grant.wait_s) == ({}, pytest.approx(3.0))


def test_each_part_of_a_block_is_spent_when_a_take_per_request_would_have_been_granted() -> None:
    record = KeyRecord()
    record.take({"rpm": 2.0}, POLICY, 0.0, reserve=True)  # another worker's block: debt of 2
    grant = record.take({"rpm": 4.0}, POLICY, 0.0, reserve=True)
    block = Block.granted(
        now=0.0,
        charged=grant.charged,
        levels=grant.levels,
        rates=grant.rates,
        capacities={"rpm": 10.0},
    )
    one = {"rpm": 1.0}
    spent_at = []
    now = 0.0
    while block.covers(one):
        now += block.wait_s(one, now)
        block.spend(one, now)
        spent_at.append(now)

    # Requests 3 to 6 of the bucket, at its 10 a second: 0.3, 0.4, 0.5, 0.6 s.
    assert spent_at == pytest.approx([0.3, 0.4, 0.5, 0.6])
    assert block.left() == {}
    assert block.paid_at() == pytest.approx(0.6)


def test_what_a_block_does_not_spend_is_what_it_gives_back() -> None:
    block = Block.granted(
        now=0.0,
        charged={"rpm": 5.0, "tpm": 500.0},
        levels={"rpm": 10.0, "tpm": 1000.0},
        rates={"rpm": 10.0, "tpm": 1000.0},
        capacities={"rpm": 10.0, "tpm": 1000.0},
    )
    block.spend({"rpm": 1.0, "tpm": 300.0}, 0.0)

    assert not block.covers({"rpm": 1.0, "tpm": 300.0})  # tokens short, requests not
    assert block.left() == {"rpm": 4.0, "tpm": 200.0}


def test_a_block_is_sized_to_recent_sending_and_bounded_by_the_limit() -> None:
    costs = {"rpm": 1.0, "tpm": 100.0}
    limits = {"rpm": 600.0, "tpm": 60_000.0}  # 10 and 1,000 a second

    # Three requests' worth: well under the bound.
    assert block_costs(costs, 3, limits) == {"rpm": 3.0, "tpm": 300.0}
    # Never more than BLOCK_HORIZON_S of a limit...
    assert block_costs(costs, 1000, limits) == {
        "rpm": 10 * BLOCK_HORIZON_S,
        "tpm": 1000 * BLOCK_HORIZON_S,
    }
    # ... nor less than the request itself.
    assert block_costs({"rpm": 1.0, "tpm": 5000.0}, 1000, limits)["tpm"] == 5000.0


def test_the_next_block_follows_what_this_one_was_spent_at() -> None:
    block = Block.granted(
        now=0.0,
        charged={"rpm": 10.0},
        levels={"rpm": 10.0},
        rates={"rpm": 10.0},
        capacities={"rpm": 10.0},
    )
    for at in (0.0, 0.25, 0.5, 0.75):
        block.spend({"rpm": 1.0}, at)
    # Four in one second: four a second over the horizon.
    assert block.next_requests(1.0) == pytest.approx(4 * BLOCK_HORIZON_S)
    assert Block.unlimited(0.0).next_requests(5.0) == 1.0


def test_the_requests_buckets_hold_are_whole_and_counted_by_the_scarcest_dimension() -> None:
    costs = {"rpm": 1.0, "tpm": 100.0, "itpm": 0.0}

    # 3.5 requests' worth of requests, 2.99999999 of tokens (float sums): 3 whole requests.
    assert held_requests(costs, {"rpm": 3.5, "tpm": 299.999999}) == 3
    assert held_requests(costs, {"rpm": 3.5, "tpm": 250.0}) == 2
    # In debt: none; a dimension no request costs holds any number.
    assert held_requests(costs, {"rpm": -2.0}) < 1
    assert held_requests(costs, {"itpm": 0.0}) == math.inf
