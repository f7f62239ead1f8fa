"""RecentValues: a window of the last span_s seconds (that adding alone forgets old values is
proven by the memory tests in test_limiter.py and test_run_monitor.py); FixedWindows: a
server counting in fixed windows recognised from its refusals and successes. Pure."""

from __future__ import annotations

import pytest

from batchrun.limits.windows import PROBE_FIRST_S, REOPEN_MARGIN_S, FixedWindows, RecentValues


def test_a_window_holds_the_values_of_its_span_up_to_the_time_asked() -> None:
    window: RecentValues[str] = RecentValues(span_s=10)
    for now, value in ((0, "a"), (4, "b"), (9, "c")):
        window.add(now, value)

    assert list(window.at(9)) == ["a", "b", "c"]
    assert list(window.at(12)) == ["b", "c"]
    assert list(window.at(30)) == []


# -- FixedWindows -------------------------------------------------------------------------------


def closed_window(windows: FixedWindows, start: float) -> float:
    """Refusals from ``start`` probed as FixedWindows says until 12 s have passed; returns
    when the last probe goes."""
    now = start
    while True:
        pause_s = windows.refused(now)
        now += max(pause_s, 0.1)
        if now - start >= 12:
            return now


def test_a_long_run_of_refusals_ended_by_a_success_is_a_fixed_window_that_reopened() -> None:
    windows = FixedWindows()
    assert windows.refused(100.0) == 0  # the first: a slot at the limit in force is enough
    assert windows.lowers_limits()
    # Then growing pauses between probes, and no more lowering.
    assert [windows.refused(t) for t in (100.1, 100.7, 101.8)] == [0.5, 1.0, 2.0]
    assert not windows.lowers_limits()
    opened = closed_window(windows, 104.0)

    windows.answered(sent_at=opened)

    assert windows.recognised and windows.opened_at == opened
    # The next refusal pauses until the window reopens, a minute after it opened.
    assert windows.refused(opened + 20) == pytest.approx(40 + REOPEN_MARGIN_S)
    assert not windows.lowers_limits()


def test_successes_sent_before_the_run_of_refusals_do_not_end_it() -> None:
    windows = FixedWindows()
    windows.refused(100.0)
    windows.answered(sent_at=99.0)  # in flight when the window closed
    assert windows.run_refusals == 1


def test_a_token_bucket_that_refuses_once_and_admits_the_next_slot_is_no_fixed_window() -> None:
    windows = FixedWindows()
    for second in range(100, 160, 3):
        windows.refused(float(second))
        windows.answered(sent_at=second + 0.2)
    assert not windows.recognised


def test_a_refusal_just_after_the_predicted_opening_is_probed_soon_and_moves_the_opening() -> None:
    windows = FixedWindows()
    windows.refused(0.0)
    windows.answered(sent_at=closed_window(windows, 0.0))
    opened = windows.opened_at
    assert opened is not None
    pause_s = windows.refused(opened + 30)  # the window is used up: wait for the next
    predicted = opened + 30 + pause_s

    # The server's window opened a second later than predicted.
    assert windows.refused(predicted) == PROBE_FIRST_S
    windows.answered(sent_at=predicted + PROBE_FIRST_S)

    assert windows.opened_at == predicted + PROBE_FIRST_S
