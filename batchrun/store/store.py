"""The job store: the owner of the database engine, with one attribute per section.

Each section is a small class in its own module, named as its attribute is, and holds the
statements of one job: ``store.batches`` (:mod:`batchrun.store.batches`),
``store.results`` (:mod:`batchrun.store.results`), ``store.repairs``, ``store.lifecycle``,
``store.leases``, ``store.lanes``, ``store.provider_batches``, ``store.health``, ``store.rates``,
``store.usage``, ``store.series``, ``store.tallies``, ``store.timelines``,
``store.latencies``, ``store.run_limits`` and ``store.cache_warmth``. From a call site (a
store's ``leases.renew``) you know which file to open. A section is built, and its module
imported, the first time it is used, so a command loads only the statements it runs.

Methods are synchronous and short; the dispatcher calls them from one worker thread (see
:mod:`batchrun.dispatch.dbthread`) so the event loop never blocks on the database. Every method
that writes does so in one transaction.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from batchrun.store.database import (
    SQLITE_BUSY_TIMEOUT_S,
    create_database_engine,
    upgrade_database,
)

if TYPE_CHECKING:
    from batchrun.store.batches import Batches
    from batchrun.store.cache_warmth import CacheWarmth
    from batchrun.store.health import Health
    from batchrun.store.lanes import Lanes
    from batchrun.store.latencies import Latencies
    from batchrun.store.leases import Leases
    from batchrun.store.lifecycle import BatchLifecycle
    from batchrun.store.provider_batches import ProviderBatches
    from batchrun.store.rates import RateStore
    from batchrun.store.repairs import Repairs
    from batchrun.store.results import Results
    from batchrun.store.run_limits import RunLimitStore
    from batchrun.store.series import SeriesReads
    from batchrun.store.tallies import Tallies
    from batchrun.store.timelines import Timelines
    from batchrun.store.usage import UsageReads


class Store:
    """All reads and writes of batches, requests and results, by section."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def open(cls, url: str, *, sqlite_busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> Store:
        """Open (creating and migrating if needed) the database at ``url``. A SQLite writer
        waits up to ``sqlite_busy_timeout_s`` for another process's write lock."""
        engine = create_database_engine(url, sqlite_busy_timeout_s=sqlite_busy_timeout_s)
        try:
            upgrade_database(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine every section runs its statements on."""
        return self._engine

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    @cached_property
    def batches(self) -> Batches:
        """Storing a batch, reading batches, budgets, a batch's stats."""
        from batchrun.store.batches import Batches

        return Batches(self._engine, usage=self.usage, health=self.health)

    @cached_property
    def results(self) -> Results:
        """The worker's group commit; results read back for the exports."""
        from batchrun.store.results import Results

        return Results(self._engine)

    @cached_property
    def repairs(self) -> Repairs:
        """Answers that did not match their schema, read back for their repair."""
        from batchrun.store.repairs import Repairs

        return Repairs(self._engine)

    @cached_property
    def lifecycle(self) -> BatchLifecycle:
        """Cancel, pause, hold, expiry, requeue, delete and prune."""
        from batchrun.store.lifecycle import BatchLifecycle

        return BatchLifecycle(self._engine)

    @cached_property
    def leases(self) -> Leases:
        """Claims, and the leases of claimed requests."""
        from batchrun.store.leases import Leases

        return Leases(self._engine)

    @cached_property
    def cache_warmth(self) -> CacheWarmth:
        """The prompt-cache groups the batch lane keeps warm, and what that took."""
        from batchrun.store.cache_warmth import CacheWarmth

        return CacheWarmth(self._engine)

    @cached_property
    def lanes(self) -> Lanes:
        """Which lane each batch and queued request is on."""
        from batchrun.store.lanes import Lanes

        return Lanes(self._engine)

    @cached_property
    def provider_batches(self) -> ProviderBatches:
        """The batch lane's records, from intent to imported results."""
        from batchrun.store.provider_batches import ProviderBatches

        return ProviderBatches(self._engine)

    @cached_property
    def health(self) -> Health:
        """How each endpoint fares, and who answered a batch."""
        from batchrun.store.health import Health

        return Health(self._engine)

    @cached_property
    def rates(self) -> RateStore:
        """The rate buckets workers share."""
        from batchrun.store.rates import RateStore

        return RateStore(self._engine)

    @cached_property
    def usage(self) -> UsageReads:
        """Usage by model: the one statement every view of tokens and cost reads."""
        from batchrun.store.usage import UsageReads

        return UsageReads(self._engine)

    @cached_property
    def series(self) -> SeriesReads:
        """Answers per time bucket, by when they were sent."""
        from batchrun.store.series import SeriesReads

        return SeriesReads(self._engine)

    @cached_property
    def tallies(self) -> Tallies:
        """Request totals and batch ends for /metrics."""
        from batchrun.store.tallies import Tallies

        return Tallies(self._engine)

    @cached_property
    def timelines(self) -> Timelines:
        """Errors, retries and limits for the dashboard."""
        from batchrun.store.timelines import Timelines

        return Timelines(self._engine)

    @cached_property
    def latencies(self) -> Latencies:
        """Answer latencies for ``batchrun report``."""
        from batchrun.store.latencies import Latencies

        return Latencies(self._engine)

    @cached_property
    def run_limits(self) -> RunLimitStore:
        """The limits each run sent a batch under."""
        from batchrun.store.run_limits import RunLimitStore

        return RunLimitStore(self._engine)
