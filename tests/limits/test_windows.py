"""RecentValues: a window of the last span_s seconds. That adding alone forgets old values is
proven by the memory tests in test_limiter.py and test_run_monitor.py."""

from __future__ import annotations

from batchrun.limits.windows import RecentValues


def test_a_window_holds_the_values_of_its_span_up_to_the_time_asked() -> None:
    window: RecentValues[str] = RecentValues(span_s=10)
    for now, value in ((0, "a"), (4, "b"), (9, "c")):
        window.add(now, value)

    assert list(window.at(9)) == ["a", "b", "c"]
    assert list(window.at(12)) == ["b", "c"]
    assert list(window.at(30)) == []
