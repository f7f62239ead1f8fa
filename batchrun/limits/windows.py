"""A sliding window of timestamped values: what happened in the last ``span_s`` seconds.

Used by the limiter (what the server let through, to learn a limit after a 429) and by the run
monitor (throughput against each limit). Old values are forgotten whenever one is added, not
only when the window is read: a window that only its readers pruned kept every value of a run
nobody read it in (a run without 429s, or under --quiet).
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
