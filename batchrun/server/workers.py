"""Dispatch inside the server: ``--workers N`` run sessions like ``batchrun run --forever``,
with the same dispatcher, limits, budgets and leases, each on an event loop of its own in a
thread of its own.

Why threads: the dispatcher's steps are short round trips through its database thread, and
on the server's loop each would queue behind the HTTP requests being answered. With a
thousand polls a second that slowed a rate-limited dispatch by a quarter
(``bench/serve.py``); on its own loop it only shares the interpreter.

A batch created through the API wakes them, so it starts within about a second; a batch
created while they are busy joins the running dispatch (see ``RunSession``). A session that
fails (a bug, a database that stays away) is logged and started again after a pause, so the
API keeps its workers. On shutdown they stop as Ctrl-C stops a run: requests in flight are
recorded, the rest stay queued for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from batchrun.config.prices import PriceTable
from batchrun.errors import BatchrunError
from batchrun.ops.run_types import ProcessCounters
from batchrun.ops.session import PassFinished, RunEvent, RunOptions, RunSession
from batchrun.transport.endpoints import Endpoints

if TYPE_CHECKING:
    from batchrun.store.store import Store

log = logging.getLogger(__name__)

# How often idle workers look for work nobody told them about (batches made by the CLI
# or another server); API creates wake them at once.
IDLE_POLL_S = 5.0
# How long a thread holding the interpreter keeps it while another waits (Python's default
# is 5 ms). A rate-limited dispatch is a chain of short steps, each handed between the
# worker's loop and its database thread; behind API threads busy with polls, every hand-over
# waited up to the default, and dispatch fell a quarter behind its limit (bench/serve.py).
SWITCH_INTERVAL_S = 0.0002
# Pause before a failed worker starts again.
RESTART_PAUSE_S = 5.0


class InProcessWorkers:
    """``count`` forever run sessions over one store, each in its own thread."""

    def __init__(
        self,
        store: Store,
        *,
        count: int,
        known: Endpoints,
        prices: PriceTable,
        env: Mapping[str, str],
        options: RunOptions | None = None,
        notify_url: str | None = None,
    ) -> None:
        """``notify_url``: the webhook each session tells of the batches that end, pause or
        expire (as ``run --notify``); None: none."""
        self._store = store
        self._notify_url = notify_url
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
        self._workers = [_Worker(self, number) for number in range(count)]
        self.stopping = False
        # The 429s of the passes that ended (a sum: a server runs passes for weeks).
        self._finished_rate_limited = 0
        self._counting = threading.Lock()

    async def start(self) -> None:
        """Start the workers' threads."""
        if self._workers:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        for worker in self._workers:
            worker.thread.start()

    def wake(self) -> None:
        """Look for work now (a batch was just created). Any thread."""
        for worker in self._workers:
            session = worker.session
            if session is not None:
                session.wake()

    def counters(self) -> ProcessCounters:
        """What only this process knows of its sending (the 429s), since it started."""
        live = [
            report
            for worker in self._workers
            if worker.session is not None and (report := worker.session.live_report)
        ]
        with self._counting:
            finished = self._finished_rate_limited
        return ProcessCounters(finished + ProcessCounters.of_reports(live).rate_limited)

    def heard(self, event: RunEvent) -> None:
        """A session's event (on its worker's thread)."""
        if isinstance(event, PassFinished):
            with self._counting:
                self._finished_rate_limited += event.result.report.rate_limited

    def session(self) -> RunSession:
        """A new forever run session over the store (with a notifier of its own: each
        session has its own event loop)."""
        notifier = None
        if self._notify_url:
            from batchrun.transport.notify import WebhookNotifier

            notifier = WebhookNotifier(self._notify_url)
        return RunSession(
            self._store,
            known=self._known,
            prices=self._prices,
            env=self._env,
            options=self._options,
            on_event=self.heard,
            notifier=notifier,
        )

    async def stop(self) -> None:
        """Stop every worker: what is in flight is recorded, then their threads end."""
        self.stopping = True
        for worker in self._workers:
            worker.stop("the server is stopping")
        for worker in self._workers:
            if worker.thread.is_alive():
                await asyncio.to_thread(worker.thread.join)


class _Worker:
    """One thread running forever sessions, started again after a failure."""

    def __init__(self, workers: InProcessWorkers, number: int) -> None:
        self._workers = workers
        self.thread = threading.Thread(
            target=self._main, name=f"batchrun-worker-{number}", daemon=True
        )
        self.session: RunSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halted: asyncio.Event | None = None
        self._reason = ""

    def _main(self) -> None:
        asyncio.run(self._keep())

    def stop(self, reason: str) -> None:
        """Stop the session under way (if any) and start no other. Any thread."""
        self._reason = reason
        loop = self._loop
        if loop is not None:
            # RuntimeError: the loop has just closed, so the thread is ending anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._halt)

    def _halt(self) -> None:
        assert self._halted is not None
        self._halted.set()
        if self.session is not None:
            self.session.stop(self._reason)

    async def _keep(self) -> None:
        self._halted = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        while not self._workers.stopping and not self._halted.is_set():
            session = self._workers.session()
            # Set and checked with no await between: a stop scheduled on this loop sees the
            # session, or is seen here.
            self.session = session
            if self._halted.is_set() or self._workers.stopping:
                break
            try:
                await session.run()
            except BatchrunError as exc:
                # Something a person must fix (a database that stays away, say): one line.
                log.error(
                    "a dispatch worker stopped: %s; it starts again in %g s",
                    exc.message,
                    RESTART_PAUSE_S,
                )
                await self._pause()
            except Exception:
                log.exception("a dispatch worker failed; it starts again in %g s", RESTART_PAUSE_S)
                await self._pause()
        self.session = None

    async def _pause(self) -> None:
        assert self._halted is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._halted.wait(), RESTART_PAUSE_S)
