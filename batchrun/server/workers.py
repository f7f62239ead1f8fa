"""Dispatch inside the server: ``--workers N`` run sessions like ``batchrun run --forever``,
on the server's event loop, with the same dispatcher, limits, budgets and leases.

A batch created through the API wakes them, so it starts within about a second; a batch
created while they are busy joins the running dispatch (see ``RunSession``). A session that
fails (a bug, a database that stays away) is logged and started again after a pause, so the
API keeps its workers. On shutdown they stop as Ctrl-C stops a run: requests in flight are
recorded, the rest stay queued for the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from batchrun.config.prices import PriceTable
from batchrun.dispatch.report import RunReport
from batchrun.ops.metrics import ProcessCounters
from batchrun.ops.session import PassFinished, RunEvent, RunOptions, RunSession
from batchrun.transport.endpoints import Endpoints

if TYPE_CHECKING:
    from batchrun.store.store import Store

log = logging.getLogger(__name__)

# How often idle workers look for work nobody told them about (batches made by the CLI
# or another server); API creates wake them at once.
IDLE_POLL_S = 5.0
# Pause before a failed worker starts again.
RESTART_PAUSE_S = 5.0


class InProcessWorkers:
    """``count`` forever run sessions over one store."""

    def __init__(
        self,
        store: Store,
        *,
        count: int,
        known: Endpoints,
        prices: PriceTable,
        env: Mapping[str, str],
        options: RunOptions | None = None,
    ) -> None:
        self._store = store
        self._count = count
        self._known = known
        self._prices = prices
        self._env = env
        base = options or RunOptions()
        self._options = RunOptions(
            **{
                **base.__dict__,
                "forever": True,
                "stop_on_signals": False,
                "poll_interval_s": min(base.poll_interval_s, IDLE_POLL_S),
            }
        )
        self._sessions: list[RunSession] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # The reports of the passes that ended, for the counters only a sender knows.
        self._finished: list[RunReport] = []

    async def start(self) -> None:
        """Start the sessions on the running loop."""
        for number in range(self._count):
            self._tasks.append(asyncio.create_task(self._keep(), name=f"batchrun-worker-{number}"))

    def wake(self) -> None:
        """Look for work now (a batch was just created)."""
        for session in self._sessions:
            session.wake()

    def counters(self) -> ProcessCounters:
        """What only this process knows of its sending (the 429s), since it started."""
        live = [report for session in self._sessions if (report := session.live_report)]
        return ProcessCounters.of_reports([*self._finished, *live])

    def _heard(self, event: RunEvent) -> None:
        if isinstance(event, PassFinished):
            self._finished.append(event.result.report)

    async def stop(self) -> None:
        """Stop every session: what is in flight is recorded, then they end."""
        self._stopping = True
        for session in self._sessions:
            session.stop("the server is stopping")
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _keep(self) -> None:
        while not self._stopping:
            session = RunSession(
                self._store,
                known=self._known,
                prices=self._prices,
                env=self._env,
                options=self._options,
                on_event=self._heard,
            )
            self._sessions.append(session)
            try:
                await session.run()
            except Exception:
                log.exception("a dispatch worker failed; it starts again in %g s", RESTART_PAUSE_S)
                await asyncio.sleep(RESTART_PAUSE_S)
            finally:
                self._sessions.remove(session)
            if not self._stopping:
                # A forever session ends by itself only at a stop; start it again if not.
                await asyncio.sleep(0)
