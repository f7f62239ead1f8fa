"""A key's record: learning from 429s, the climb back, the measure of what the server let
through, and the start-up ramp. Pure: times are passed in."""

from __future__ import annotations

import pytest

from batchrun.limits.dimensions import Amounts, RateLimits
from batchrun.limits.keyrecord import (
    PROBE_SHARE,
    RAMP_FIRST_ANSWER_MAX_S,
    RAMP_IDLE_S,
    RAMP_START_SHARE,
    SLOW_START_STEP_PER_MIN,
    START_PER_MIN,
    KeyPolicy,
    KeyRecord,
    PendingChanges,
)

CONFIGURED = RateLimits(rpm=1200)
POLICY = KeyPolicy(configured=CONFIGURED, burst_s=1.0, ramp_s=5.0)
NO_RAMP = KeyPolicy(configured=CONFIGURED, burst_s=1.0, ramp_s=0)
ONE_REQUEST = {"rpm": 1.0}


def rate_limited(at: float, *named: str) -> PendingChanges:
    return PendingChanges(rate_limited=[(at, frozenset(named))])


def answered(at: float, requests: float = 1.0) -> PendingChanges:
    return PendingChanges(admitted=Amounts(requests, 0, 0), answered_at=at)


def test_a_429_without_history_lowers_by_a_quarter_then_the_limit_climbs_back_with_time() -> None:
    record = KeyRecord()

    record.apply(rate_limited(100.0), CONFIGURED, 100.0)

    assert record.limit("rpm", CONFIGURED, 100.0) == 900
    # 1 % of the 1,200 configured every 2 s: the same value whoever asks, whenever.
    assert record.limit("rpm", CONFIGURED, 101.9) == 900
    assert record.limit("rpm", CONFIGURED, 102.0) == pytest.approx(912)
    assert record.limit("rpm", CONFIGURED, 120.0) == pytest.approx(1020)
    # Back at the ceiling after 25 steps: forgotten.
    assert record.limit("rpm", CONFIGURED, 150.0) == 1200
    record.take(ONE_REQUEST, NO_RAMP, 150.0)
    assert record.dimensions["rpm"].learned is None


def test_429s_of_one_burst_lower_once_and_restart_the_climb() -> None:
    record = KeyRecord()
    record.apply(rate_limited(100.0), CONFIGURED, 100.0)
    record.apply(rate_limited(101.0), CONFIGURED, 101.0)  # within the 2 s cool-down
    assert record.limit("rpm", CONFIGURED, 101.0) == 900

    record.apply(rate_limited(103.9), CONFIGURED, 103.9)  # the climb had reached 912 at 102
    assert record.limit("rpm", CONFIGURED, 103.9) == pytest.approx(912 * 0.75)
    # Another 429 restarts the climb: no step until 2 s after it.
    record.apply(rate_limited(105.0), CONFIGURED, 105.0)
    assert record.limit("rpm", CONFIGURED, 106.9) == pytest.approx(912 * 0.75)


def test_a_429_with_history_lowers_to_97_percent_of_what_the_server_let_through() -> None:
    record = KeyRecord()
    # The server answered 10 requests a second (600 a minute) for 30 s.
    for tick in range(300):
        now = 100.0 + tick * 0.1
        record.apply(answered(now), CONFIGURED, now)

    assert record.measured_per_min("rpm", 130.0) == pytest.approx(600, rel=0.02)
    record.apply(rate_limited(130.0), CONFIGURED, 130.0)
    assert record.limit("rpm", CONFIGURED, 130.0) == pytest.approx(582, rel=0.02)


def test_a_429_for_an_announced_limit_without_history_lowers_nothing() -> None:
    record = KeyRecord()
    record.apply(PendingChanges(announced={"rpm": 600.0}), CONFIGURED, 100.0)

    record.apply(rate_limited(100.0, "rpm"), CONFIGURED, 100.0)

    assert record.limit("rpm", CONFIGURED, 100.0) == 600


def test_a_429_naming_a_limit_lowers_that_one_only() -> None:
    configured = RateLimits(rpm=1200, itpm=80_000)
    record = KeyRecord()

    record.apply(rate_limited(100.0, "itpm"), configured, 100.0)

    assert record.limits(configured, 100.0) == {"rpm": 1200, "itpm": 60_000}


def test_the_ramp_holds_a_fifth_until_the_first_answer_then_climbs_to_the_limit() -> None:
    record = KeyRecord()
    record.take(ONE_REQUEST, POLICY, 0.0)  # a new key: the ramp starts

    assert record.ramp_share(3.0, 5.0) == RAMP_START_SHARE
    record.apply(answered(3.0), CONFIGURED, 3.0)
    assert [record.ramp_share(t, 5.0) for t in (3.0, 5.5, 8.0, 20.0)] == pytest.approx(
        [0.2, 0.6, 1.0, 1.0]
    )
    # The refill follows it: 20 a second at the limit, 4 at the start.
    assert record.dimensions["rpm"].bucket is not None
    assert record.dimensions["rpm"].bucket.rate_per_s == pytest.approx(4.0)
    record.take(ONE_REQUEST, POLICY, 5.5)
    assert record.dimensions["rpm"].bucket.rate_per_s == pytest.approx(12.0)


def test_without_an_answer_the_climb_starts_a_minute_after_the_ramp() -> None:
    record = KeyRecord()
    record.take(ONE_REQUEST, POLICY, 0.0)

    assert record.ramp_share(RAMP_FIRST_ANSWER_MAX_S - 0.1, 5.0) == RAMP_START_SHARE
    assert record.ramp_share(RAMP_FIRST_ANSWER_MAX_S + 5.0, 5.0) == 1.0


def test_a_key_in_use_does_not_ramp_again_and_an_idle_one_does_without_a_burst() -> None:
    record = KeyRecord()
    record.take(ONE_REQUEST, POLICY, 0.0)
    record.apply(answered(1.0), CONFIGURED, 1.0)
    now = 1.0
    while now < 30.0:  # sending at the limit: 20 a second
        now += 0.05
        record.take(ONE_REQUEST, POLICY, now)
    assert record.ramp_share(now, 5.0) == 1.0

    # Nothing sent for longer than RAMP_IDLE_S: the bucket filled, then stayed full.
    later = now + 1.0 + RAMP_IDLE_S + 0.1
    grant = record.take(ONE_REQUEST, POLICY, later)

    assert grant.wait_s == 0
    assert record.ramp_share(later, 5.0) == RAMP_START_SHARE
    bucket = record.dimensions["rpm"].bucket
    assert bucket is not None
    # What is left of the full bucket is the ramp's start: 4 of 20, minus the one taken.
    assert bucket.available(later) == pytest.approx(20 * RAMP_START_SHARE - 1)


def test_a_key_that_waits_long_for_its_turn_is_not_idle() -> None:
    # One huge reservation puts the bucket 60 s in debt: the next take, a minute later, finds
    # it just full, not idle.
    policy = KeyPolicy(configured=RateLimits(otpm=6000), burst_s=1.0, ramp_s=5.0)
    record = KeyRecord()
    record.take({"otpm": 100.0}, policy, 0.0)
    record.apply(answered(1.0), policy.configured, 1.0)
    record.take({"otpm": 100.0}, policy, 10.0)
    assert record.take({"otpm": 6000.0}, policy, 11.0).wait_s == 0

    grant = record.take({"otpm": 6000.0}, policy, 11.0)

    assert grant.wait_s == pytest.approx(60, abs=0.01)
    assert record.take({"otpm": 6000.0}, policy, 11.0 + grant.wait_s).wait_s == 0
    assert record.ramp_share(11.0 + grant.wait_s, 5.0) == 1.0


# -- nothing known: the slow start, the first 429, the probe ----------------------------------

UNKNOWN = KeyPolicy(configured=RateLimits(), burst_s=1.0, ramp_s=5.0)
NOTHING = RateLimits()


def test_with_nothing_known_requests_start_at_the_start_rate_and_grow_with_answers_only() -> None:
    record = KeyRecord()
    record.take(ONE_REQUEST, UNKNOWN, 0.0)
    assert record.limit("rpm", NOTHING, 0.0) == START_PER_MIN
    # No answers: no growth, however long.
    assert record.limit("rpm", NOTHING, 600.0) == START_PER_MIN

    record.apply(answered(1.0, requests=4), NOTHING, 1.0)

    assert record.limit("rpm", NOTHING, 1.0) == START_PER_MIN + 4 * SLOW_START_STEP_PER_MIN
    assert record.slow_starting(NOTHING)


def test_a_start_rate_of_none_leaves_a_key_with_nothing_known_unpaced() -> None:
    record = KeyRecord()
    grant = record.take(ONE_REQUEST, KeyPolicy(configured=NOTHING, start_per_min=None), 0.0)
    assert grant.wait_s == 0 and record.limits(NOTHING, 0.0) == {}


def test_the_first_429_of_a_slow_start_halves_it_then_it_climbs_additively_while_answers_come() -> (
    None
):
    record = KeyRecord()
    record.take(ONE_REQUEST, UNKNOWN, 0.0)
    record.apply(answered(1.0, requests=34), NOTHING, 1.0)  # 60 + 34 × 30 = 1,080
    assert record.limit("rpm", NOTHING, 1.0) == 1080

    record.apply(rate_limited(2.0), NOTHING, 2.0)

    assert record.limit("rpm", NOTHING, 2.0) == 540
    assert not record.slow_starting(NOTHING)
    # Answers no longer add to it: it climbs by 1 % of itself every 2 s...
    record.apply(answered(3.0, requests=10), NOTHING, 3.0)
    assert record.limit("rpm", NOTHING, 3.9) == 540
    assert record.limit("rpm", NOTHING, 4.0) == pytest.approx(540 * (1 + PROBE_SHARE))
    # ... but not beyond one step after the latest answer (at 3 s).
    assert record.limit("rpm", NOTHING, 60.0) == pytest.approx(540 * (1 + PROBE_SHARE))
    record.apply(answered(9.0), NOTHING, 9.0)
    assert record.limit("rpm", NOTHING, 11.0) == pytest.approx(540 * (1 + 4 * PROBE_SHARE))


def test_the_first_429_settles_on_what_was_let_through_when_that_is_more_than_half() -> None:
    record = KeyRecord()
    record.take(ONE_REQUEST, UNKNOWN, 0.0)
    # 10 requests a second answered for 20 s: 600 a minute let through, measured.
    for second in range(1, 21):
        record.apply(answered(float(second), requests=10), NOTHING, float(second))
    assert record.limit("rpm", NOTHING, 20.0) == 60 + 200 * 30
    measured = record.measured_per_min("rpm", 20.0)
    assert measured is not None and measured == pytest.approx(600, rel=0.15)

    record.apply(rate_limited(20.0), NOTHING, 20.0)

    assert record.limit("rpm", NOTHING, 20.0) == pytest.approx(
        max(measured * 0.97, (60 + 200 * 30) / 2)
    )


def test_an_announced_limit_ends_a_slow_start() -> None:
    record = KeyRecord()
    record.take(ONE_REQUEST, UNKNOWN, 0.0)
    record.apply(PendingChanges(announced={"rpm": 4000.0}), NOTHING, 1.0)
    assert record.limit("rpm", NOTHING, 1.0) == 4000
    assert not record.slow_starting(NOTHING)


def test_a_429_without_a_wait_holds_the_next_request_one_slot_at_the_lowered_limit() -> None:
    record = KeyRecord()
    record.take(ONE_REQUEST, NO_RAMP, 0.0)
    assert record.take(ONE_REQUEST, NO_RAMP, 10.0).wait_s == 0  # the bucket is full: 20 left

    changes = rate_limited(10.0)
    changes.exhausted_at.append(10.0)
    grant = record.take(ONE_REQUEST, NO_RAMP, 10.0, changes)

    # Lowered blind to 900 a minute: one request every 1/15 s.
    assert grant.wait_s == pytest.approx(60 / 900)
