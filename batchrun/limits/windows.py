"""Windows of time: what happened lately, and servers that count in fixed windows.

:class:`RecentValues` is a sliding window of timestamped values: what happened in the last
``span_s`` seconds (the run monitor's throughput against each limit, the router's recent
answers). Old values are forgotten whenever one is added, not only when the window is read: a
window that only its readers pruned kept every value of a run nobody read it in.

:class:`FixedWindows` recognises a server that counts requests in fixed windows (LiteLLM's
proxy counts per key in 60 s windows) from the pattern of its refusals and successes, and says
how long to wait after a refusal that gave no ``retry-after``. Pure: times are passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

Value = TypeVar("Value")


class RecentValues(Generic[Value]):
    """Values with the (monotonic) time they happened, kept for ``span_s`` seconds."""

    def __init__(self, span_s: float) -> None:
        self._span_s = span_s
        self._entries: deque[tuple[float, Value]] = deque()

    def add(self, now: float, value: Value) -> None:
        """Record ``value`` as happening at ``now``."""
        self._entries.append((now, value))
        self._forget_before(now - self._span_s)

    def at(self, now: float) -> Iterator[Value]:
        """The values of the ``span_s`` seconds up to ``now``, oldest first."""
        return (value for _, value in self.timed(now))

    def timed(self, now: float) -> Iterator[tuple[float, Value]]:
        """The values of the ``span_s`` seconds up to ``now`` with their times, oldest first."""
        self._forget_before(now - self._span_s)
        return iter(self._entries)

    def _forget_before(self, moment: float) -> None:
        while self._entries and self._entries[0][0] < moment:
            self._entries.popleft()


# Gateways that count in fixed windows count per minute.
FIXED_WINDOW_S = 60.0
# A run of refusals (no success of a request sent after the first) this long and this many,
# then a success: a window reopened. A token bucket refills in a slot: it never refuses so long.
FIXED_CLOSED_MIN_S = 10.0
FIXED_CLOSED_MIN_REFUSALS = 3
# While refusals repeat and no window is known, probes go after 0.5 s, 1 s, 2 s, then 4 s.
PROBE_FIRST_S = 0.5
PROBE_MAX_S = 4.0
# Sent this long after the predicted reopening: late enough for a clock a little off.
REOPEN_MARGIN_S = 0.25


class FixedWindows:
    """What one worker saw of a key's refusals without ``retry-after``: a run of them
    (refusals with no success of a request sent after the first), and, once recognised, when
    the server's fixed windows open.

    A run that lasts :data:`FIXED_CLOSED_MIN_S` and :data:`FIXED_CLOSED_MIN_REFUSALS`, ended by
    a success, is a window that was closed and reopened: from then on the first refusal of a
    run pauses until the next opening (every :data:`FIXED_WINDOW_S` from the send of the
    request that found one open), and each later reopening a probe finds moves that moment.
    Until then refusals in a row are probed after growing pauses (:data:`PROBE_FIRST_S`
    doubling to :data:`PROBE_MAX_S`); so are refusals just after a predicted opening.
    """

    def __init__(self, window_s: float = FIXED_WINDOW_S) -> None:
        self.window_s = window_s
        # A moment a window opened (the send of the request that found it open), if known.
        self.opened_at: float | None = None
        self.run_started_at: float | None = None
        self.run_refusals = 0
        self._probe_at: float | None = None

    @property
    def recognised(self) -> bool:
        """Whether the server was seen to count in fixed windows."""
        return self.opened_at is not None

    def refused(self, now: float) -> float:
        """A refusal without a wait at ``now``: returns the seconds to pause (0: the next
        slot at the limit in force is enough)."""
        if self.run_refusals == 0:
            self.run_started_at = now
        self.run_refusals += 1
        pause_s = 0.0
        if self.opened_at is not None:
            opening = self.next_opening(now)
            since_predicted_s = now - (opening - self.window_s)
            # Just after a predicted opening the window may not be open yet: probe soon.
            if since_predicted_s > PROBE_MAX_S + REOPEN_MARGIN_S or self.run_refusals == 1:
                pause_s = opening - now
        if pause_s == 0.0 and self.run_refusals > 1:
            pause_s = min(PROBE_FIRST_S * 2 ** (self.run_refusals - 2), PROBE_MAX_S)
        self._probe_at = now + pause_s
        return pause_s

    def answered(self, sent_at: float | None) -> None:
        """A success of a request sent at ``sent_at`` (None: not known, counts as sent after
        the run began)."""
        started = self.run_started_at
        if self.run_refusals == 0 or started is None:
            return
        if sent_at is not None and sent_at < started:
            return  # sent before the run began: says nothing of now
        probe_at = self._probe_at if self._probe_at is not None else started
        long_run = (
            self.run_refusals >= FIXED_CLOSED_MIN_REFUSALS
            and probe_at - started >= FIXED_CLOSED_MIN_S
        )
        if long_run or self.opened_at is not None:
            # The request found the window open; it went at the end of the last pause.
            self.opened_at = probe_at if sent_at is None else max(probe_at, sent_at)
        self.run_started_at, self.run_refusals, self._probe_at = None, 0, None

    def next_opening(self, now: float) -> float:
        """The first predicted opening after ``now`` (once recognised)."""
        assert self.opened_at is not None
        windows = (now - self.opened_at) // self.window_s + 1
        return self.opened_at + windows * self.window_s + REOPEN_MARGIN_S

    def lowers_limits(self) -> bool:
        """Whether the refusal just counted may lower a learned limit: only the first of a
        run, and none once windows are recognised (a rate measured across a closed window is
        no limit)."""
        return self.opened_at is None and self.run_refusals <= 1
