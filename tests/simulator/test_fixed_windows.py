"""The simulator's fixed windows (LiteLLM's counting): a window admits its whole allowance at
once, refuses until it ends, and the next starts with the first request after that. Pure."""

from __future__ import annotations

import pytest

from batchrun.simulator.buckets import TokenBucket


def test_a_fixed_window_admits_its_allowance_then_refuses_until_it_ends() -> None:
    bucket = TokenBucket(120, burst_s=2.0, now=0.0, window_s=60.0)  # 120 a minute
    for _ in range(120):
        bucket.refill(1.0)
        assert bucket.has_room(1)
        bucket.level -= 1

    bucket.refill(59.0)
    assert not bucket.has_room(1)  # no refill within the window
    assert bucket.seconds_until(1) == pytest.approx(1.0)

    bucket.refill(75.0)  # the first request after the end starts the next window
    assert bucket.remaining == 120
    bucket.level -= 120
    bucket.refill(134.0)
    assert not bucket.has_room(1)
    assert bucket.seconds_until(1) == pytest.approx(1.0)
