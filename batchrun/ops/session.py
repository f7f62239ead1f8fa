"""A run as a whole: one pass, or pass after pass until stopped (``forever``).

Each pass plans, dispatches and summarises (:mod:`batchrun.ops.passes`); a
:class:`RunSession` decides when passes start and end: once, or with ``forever`` again and
again, ``poll_interval_s`` apart while there is nothing to do (or at once when
:meth:`RunSession.wake` is called), until the time limit or Ctrl-C, and picks the run's exit
code. Ctrl-C and SIGTERM (with ``stop_on_signals``) or :meth:`RunSession.stop` stop it
gracefully, dispatching or idle.

Nothing here prints. What a run has to tell goes out as ``RunEvent`` values
(:mod:`batchrun.ops.run_types`) to the caller's ``on_event``: a ``Note`` for a person, a
``Progress`` snapshot every ``progress_interval_s``, and a ``PassFinished`` with each pass's
``PassResult``. The CLI turns them into a live view or log lines; the Python API leaves them
to the caller. With a ``notifier``, batches that end, pause, expire or are interrupted are
told to a webhook as well (:mod:`batchrun.ops.notices`), while the run goes on.

Every database call goes through the run's one
:class:`~batchrun.dispatch.worker_db.WorkerDatabase`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from batchrun.config.prices import PriceTable
from batchrun.dispatch.counts import RunReport
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.errors import ExitCode
from batchrun.ops.forever import JOIN_POLL_S
from batchrun.ops.notices import RunNotices
from batchrun.ops.passes import PassRunner
from batchrun.ops.run_types import (
    BELOW_PAUSED,
    Note,
    PassFinished,
    PassResult,
    ProcessCounters,
    Progress,
    RunEvent,
    RunOptions,
    RunResult,
)
from batchrun.ops.waiting import WaitingBatch
from batchrun.transport.endpoints import Endpoints

if TYPE_CHECKING:
    from batchrun.store.store import Store
    from batchrun.transport.notify import WebhookNotifier

# The values of a run live in run_types; they are named here too, where callers found them.
__all__ = [
    "JOIN_POLL_S",
    "Note",
    "PassFinished",
    "PassResult",
    "Progress",
    "RunEvent",
    "RunOptions",
    "RunResult",
    "RunSession",
]


def _ignore(_event: RunEvent) -> None:
    return None


class RunSession:
    """One run over one store: one pass, or passes until stopped."""

    def __init__(
        self,
        store: Store,
        *,
        known: Endpoints,
        prices: PriceTable,
        env: Mapping[str, str],
        options: RunOptions,
        on_event: Callable[[RunEvent], None] | None = None,
        notifier: WebhookNotifier | None = None,
    ) -> None:
        """``notifier``: where batches that end, pause, expire or are interrupted are told
        (:mod:`batchrun.ops.notices`); None: nowhere."""
        self._store = store
        self._options = options
        self._emit = on_event or _ignore
        self._notices = None if notifier is None else RunNotices(notifier, prices=prices)
        # Set by a stop or wake(): ends an idle wait and makes a pass look for batches to
        # join now. Cleared before each look, so a wake during one causes another.
        self._wakeup = asyncio.Event()
        # The loop run() runs on, for wake() from other threads; None when not running.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._passes = PassRunner(
            known=known,
            prices=prices,
            env=env,
            options=options,
            emit=self._emit,
            notices=self._notices,
            wakeup=self._wakeup,
        )

    async def run(self) -> RunResult:
        """Run one pass, or passes until the time limit or Ctrl-C (``forever``). With
        ``stop_on_signals``, Ctrl-C and SIGTERM stop it gracefully, dispatching or idle."""
        db = WorkerDatabase(self._store)
        self._loop = asyncio.get_running_loop()
        try:
            with _signals_stop(self._request_stop, enabled=self._options.stop_on_signals):
                result = await self._run(db)
            # Outside the signal handlers: a second Ctrl-C ends this bounded wait too.
            if self._notices is not None:
                await self._notices.drain()
            return result
        finally:
            if self._notices is not None:
                await self._notices.abort()
            self._loop = None
            db.close()

    def wake(self) -> None:
        """Look for new work now (a batch was just submitted): an idle forever run plans a
        pass at once instead of after the rest of ``poll_interval_s``, and a forever pass
        in progress looks for batches to join it at once. Safe to call from any thread, and
        before :meth:`run` started or after it ended (it does nothing then)."""
        loop = self._loop
        if loop is None:
            return
        # The loop may close between the read above and the call: then there is no run.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wakeup.set)

    def stop(self, reason: str) -> None:
        """Stop the run as Ctrl-C does (a host program shutting down): requests in flight
        are recorded, no new pass starts. Call it on the run's own loop."""
        self._request_stop(reason)

    @property
    def live_report(self) -> RunReport | None:
        """What the pass dispatching now has done so far (None between passes)."""
        return self._passes.live_report

    def counters(self) -> ProcessCounters:
        """What only this process knows of the run's sending so far: the 429s of every
        pass, the one dispatching now included (what ``run --metrics-port`` serves). Never
        lower than before. Safe to call from any thread."""
        return self._passes.counters()

    def _request_stop(self, reason: str) -> None:
        """Stop the run: the dispatch in progress drains (a second stop ends it at once), and
        no new pass starts."""
        self._passes.request_stop(reason)
        self._wakeup.set()

    async def _run(self, db: WorkerDatabase) -> RunResult:
        options = self._options
        loop = asyncio.get_running_loop()
        deadline = None if options.max_runtime_s is None else loop.time() + options.max_runtime_s
        if not options.forever:
            done = await self._passes.run_pass(db, deadline, exclude=set())
            if done is None:
                return self._idle_result(None, 0)
            return RunResult(done.exit_code, done, 1, done.waiting)
        # Batches this run paused (credentials, budget) or left waiting (a key not set here)
        # are not retried every poll; a new run of that batch retries them.
        paused_here: set[str] = set()
        waiting: dict[str, WaitingBatch] = {}
        idle_said = False
        last: PassResult | None = None
        passes = 0
        while True:
            if deadline is not None and loop.time() >= deadline:
                # A batch paused or left waiting by an earlier pass still is: say so.
                code = ExitCode.PAUSED if paused_here else ExitCode.OK
                return RunResult(code, last, passes, tuple(waiting.values()))
            if self._passes.stopping is not None:
                return self._idle_result(last, passes, tuple(waiting.values()))
            # Cleared before looking: a wake() from now on ends the idle wait below.
            self._wakeup.clear()
            done = await self._passes.run_pass(db, deadline, exclude=paused_here)
            if done is not None:
                last, passes, idle_said = done, passes + 1, False
                paused_here.update(done.report.paused)
                waiting.update((w.batch_id, w) for w in done.waiting)
                if done.stopped_by_time_limit or done.report.interrupted:
                    code = done.exit_code
                    if paused_here and code in BELOW_PAUSED:
                        code = ExitCode.PAUSED
                    return RunResult(code, last, passes, tuple(waiting.values()))
                continue
            if not idle_said:
                self._emit(
                    Note(f"no queued work; looking again every {options.poll_interval_s:g} s")
                )
                idle_said = True
            pause_s = options.poll_interval_s
            if deadline is not None:
                pause_s = min(pause_s, max(deadline - loop.time(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), pause_s)

    def _idle_result(
        self, last: PassResult | None, passes: int, waiting: tuple[WaitingBatch, ...] = ()
    ) -> RunResult:
        """How a run that is not dispatching ends: interrupted if a stop came, else done."""
        stopping = self._passes.stopping
        if stopping is None:
            return RunResult(ExitCode.OK, last, passes, waiting)
        self._emit(Note(f"{stopping}: nothing was in flight; stopped"))
        return RunResult(ExitCode.INTERRUPTED, last, passes, waiting)


@contextmanager
def _signals_stop(stop: Callable[[str], None], *, enabled: bool) -> Iterator[None]:
    """While the block runs, Ctrl-C and SIGTERM call ``stop`` with a reason (when enabled,
    and this is the main thread of a platform with signals)."""
    loop = asyncio.get_running_loop()
    installed = []
    if enabled:
        for signum, name in ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")):
            try:
                loop.add_signal_handler(signum, stop, f"interrupted by {name}")
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
