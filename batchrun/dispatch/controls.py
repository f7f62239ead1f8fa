"""Which of a worker's batches other processes stopped (canceled, paused, ended, expired),
read in transactions the worker makes anyway.

The dispatcher must see a cancel or a pause within its control interval
(:attr:`~batchrun.dispatch.settings.DispatchConfig.control_poll_s`). Instead of a read of its
own every interval, it asks :class:`ControlReadings` for the latest reading that rode on a
rate-bank take or a group commit of results (``WorkerDatabase.take_rates`` and
``WorkerDatabase.record`` read the batches' state in their transaction while the dispatcher
watches), and reads on its own only when none is fresh: a worker sending under a shared
limit takes about every half second, and one that answers commits results at least every
half second (the group window), so most of its control checks cost nothing. A reading
counts from the moment it was asked for (before its transaction began), so it is never
fresher than it is.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ControlReading:
    """Which of ``batch_ids`` were stopped (id → why, as ``BatchLifecycle.stopped`` says),
    read in a transaction asked for at ``asked_at`` (event-loop seconds)."""

    asked_at: float
    batch_ids: frozenset[str]
    stopped: Mapping[str, str]


class ControlReadings:
    """The batches a dispatcher watches, and the latest reading of them made on the way."""

    def __init__(self) -> None:
        self._watched: Callable[[], Sequence[str]] | None = None
        self._now: Callable[[], datetime] | None = None
        self._latest: ControlReading | None = None

    def watch(self, batch_ids: Callable[[], Sequence[str]], now: Callable[[], datetime]) -> None:
        """Read ``batch_ids()`` (as of ``now()``: expiry is a time) with every take from now
        on, until :meth:`stop_watching`."""
        self._watched, self._now, self._latest = batch_ids, now, None

    def stop_watching(self) -> None:
        """No more readings (the dispatch ended)."""
        self._watched = self._now = self._latest = None

    def wanted(self) -> tuple[list[str], datetime] | None:
        """The batches to read with the next take and the time to read them at, or None."""
        if self._watched is None or self._now is None:
            return None
        batch_ids = list(self._watched())
        return (batch_ids, self._now()) if batch_ids else None

    def read(self, asked_at: float, batch_ids: Sequence[str], stopped: Mapping[str, str]) -> None:
        """Keep a reading made in a transaction asked for at ``asked_at``, if it is the
        latest."""
        if self._watched is None:
            return
        latest = self._latest
        if latest is None or asked_at > latest.asked_at:
            kept = dict(stopped)
            for batch_id, why in (latest.stopped if latest is not None else {}).items():
                # A cancel that this worker's own commits completed between two readings
                # reads "ended" in the later one: the dispatcher must still hear it was
                # canceled (it may not have looked at the earlier reading).
                if why == "canceling" and kept.get(batch_id) == "ended":
                    kept[batch_id] = why
            self._latest = ControlReading(asked_at, frozenset(batch_ids), kept)

    def fresh(self, batch_ids: Collection[str], since: float) -> ControlReading | None:
        """The latest reading if it was asked for after ``since`` and covers every one of
        ``batch_ids``; else None (the caller reads on its own)."""
        latest = self._latest
        if latest is None or latest.asked_at <= since:
            return None
        if not latest.batch_ids.issuperset(batch_ids):
            return None
        return latest
