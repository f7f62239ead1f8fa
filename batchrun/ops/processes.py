"""``batchrun run --processes N``: one run as N worker processes on one database.

One Python process spends its CPU on one core; a machine with more cores sends more when
several workers share the batches. Workers already share a database safely (claims are
atomic, requests are leased, the rate-limit buckets live in the database bank, so a limit
binds them together exactly as it binds one). :class:`ProcessRun` is the parent's side:

- it holds the run lock (the caller takes it), starts N workers
  (:mod:`batchrun.ops.worker_process`), each a fresh interpreter running one
  :class:`~batchrun.ops.session.RunSession` on the same database with the same options, and
  shows them as one run: one progress line (:func:`~batchrun.ops.combined.combined_snapshot`
  of their latest snapshots), each note once, one summary and one exit code
  (:mod:`batchrun.ops.combined`), and the webhook notices, sent by the parent only;
- the workers run in sessions of their own, so a Ctrl-C on the terminal reaches the parent
  only; it passes each Ctrl-C or SIGTERM on to every worker, once: the first drains them
  (what is in flight is recorded, the rest stays queued), a second stops them at once;
- a worker that stops without a result (killed, crashed) is said at once, and what it had
  in flight is put back in the queue at once (its process is gone, as a starting worker
  would find), so the others send it; they go on to the end of the work, then the run fails
  with :class:`~batchrun.errors.WorkerProcessError` (exit 1);
- when the parent dies (kill -9 included), each worker sees its standard input end and
  stops as on SIGTERM: nothing runs unsupervised, and nothing is sent twice;
- a worker that fails with a :class:`~batchrun.errors.BatchrunError` (a user's mistake,
  the database lost) stops the others (a byte on their pipe: they drain as on Ctrl-C), and
  the run raises that error, once.

Each worker with the built-in simulator endpoint has its own in-process simulator: the
simulator's own limits then apply per process, while the limits batchrun applies are shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchrun.config.prices import PriceTable
from batchrun.dispatch.owners import is_dead_here
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.errors import BatchrunError, ExitCode, UsageError, WorkerProcessError
from batchrun.ops.combined import combined_exit_code, combined_report, combined_snapshot
from batchrun.ops.notices import RunNotices
from batchrun.ops.pass_plan import batch_costs
from batchrun.ops.run_types import (
    Note,
    PassFinished,
    PassResult,
    Progress,
    RunEvent,
    RunOptions,
    RunResult,
)
from batchrun.ops.runner import plan_run
from batchrun.ops.waiting import WaitingBatch
from batchrun.ops.worker_process import WorkerSpec, encode_spec
from batchrun.transport.endpoints import Endpoints

if TYPE_CHECKING:
    from batchrun.ops.monitor import ProgressSnapshot
    from batchrun.store.store import Store
    from batchrun.transport.notify import WebhookNotifier

log = logging.getLogger(__name__)

# The most workers one run starts: beyond the cores, more only contend for them.
MAX_PROCESSES = 64
# What a worker runs: this very batchrun (its folder first on the import path, whatever the
# worker's would be), writing its messages to the descriptor ``{fd}``.
_WORKER_COMMAND = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from batchrun.ops.worker_process import main; main({fd})"
)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def process_count(value: int | str) -> int:
    """The number of worker processes ``value`` asks for: a whole number from 1 to
    MAX_PROCESSES, or ``"auto"`` (:func:`usable_cores`); UsageError naming ``processes``
    otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":  # as many workers as this process may use cores
            return min(usable_cores(), MAX_PROCESSES)
        if not text.isdigit():
            raise UsageError(
                argument="processes",
                problem=f"{value!r} is not a number of processes (1, 2, ... or auto)",
            )
        value = int(text)
    if isinstance(value, bool) or not 1 <= value <= MAX_PROCESSES:
        raise UsageError(
            argument="processes",
            problem=f"must be from 1 to {MAX_PROCESSES} (or auto), not {value!r}",
        )
    return value


@dataclasses.dataclass
class _Worker:
    """One worker process as the parent sees it."""

    index: int
    process: subprocess.Popen[bytes]
    ready: bool = False
    # Signals that came before the worker could take them (it listens once ready).
    pending: list[signal.Signals] = dataclasses.field(default_factory=list)
    snapshot: ProgressSnapshot | None = None
    result: RunResult | None = None
    error: BatchrunError | None = None
    gone: bool = False


class ProcessRun:
    """One run as ``count`` worker processes on the database at ``database_url``."""

    def __init__(
        self,
        database_url: str,
        store: Store,
        *,
        count: int,
        known: Endpoints,
        prices: PriceTable,
        env: Mapping[str, str],
        options: RunOptions,
        on_event: Callable[[RunEvent], None] | None = None,
        notifier: WebhookNotifier | None = None,
    ) -> None:
        """``store``: the parent's, for the batches before and after the run; ``options``:
        every worker's (``forever`` is refused: see check_run_arguments)."""
        self._database_url = database_url
        self._store = store
        self._count = count
        self._known = known
        self._prices = prices
        self._env = dict(env)
        self._options = options
        self._emit = on_event or (lambda _event: None)
        self._notices = None if notifier is None else RunNotices(notifier, prices=prices)
        self._workers: list[_Worker] = []
        self._said: set[str] = set()
        self._logged: set[tuple[str, int, str]] = set()
        self._messages: asyncio.Queue[tuple[int, tuple[Any, ...]]] = asyncio.Queue()

    async def run(self) -> RunResult:
        """Start the workers, show them as one run until every one has ended, and return
        the run's result (raise the first worker's error, or WorkerProcessError)."""
        db = WorkerDatabase(self._store)
        loop = asyncio.get_running_loop()
        side: list[asyncio.Task[None]] = []
        try:
            ids = await self._announce(db)
            with _forwarded_signals(self._forward, enabled=self._options.stop_on_signals):
                for index in range(self._count):
                    self._workers.append(await self._start(index, loop))
                interval = self._options.progress_interval_s
                if interval is not None:
                    side.append(asyncio.create_task(self._watch(interval)))
                if self._notices is not None:
                    side.append(
                        asyncio.create_task(self._notices.watch(db, lambda: ids, self._paused))
                    )
                await self._supervise(db)
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            side.clear()
            result = await self._result(db)
            if self._notices is not None:
                await self._notices.drain()
            self._raise_failures()
            return result
        finally:
            for task in side:
                task.cancel()
            await self._stop_all()
            if self._notices is not None:
                await self._notices.abort()
            db.close()

    # -- starting and watching the workers -------------------------------------------------

    async def _announce(self, db: WorkerDatabase) -> list[str]:
        """The batches the run starts with, told to the notices (as the one worker does)."""
        if self._notices is None:
            return []
        plan = await plan_run(db, self._options.batch_ids)
        ids = [*plan.batches, *plan.lane_only]
        self._notices.begin_pass({batch_id: await db.get_batch(batch_id) for batch_id in ids})
        return ids

    async def _start(self, index: int, loop: asyncio.AbstractEventLoop) -> _Worker:
        """Start worker ``index``, send it its spec, and read its messages on a thread."""
        process, read_fd = await asyncio.to_thread(_spawn)
        worker = _Worker(index, process)
        spec = WorkerSpec(
            index=index,
            count=self._count,
            parent_pid=os.getpid(),
            database_url=self._database_url,
            known=self._known,
            prices=self._prices,
            env=self._env,
            options=dataclasses.replace(self._options, stop_on_signals=True),
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        stdin = process.stdin
        assert stdin is not None

        def send_spec() -> None:
            # The pipe stays open: its end is how the worker learns that the parent is gone.
            with contextlib.suppress(OSError):
                stdin.write(encode_spec(spec))
                stdin.flush()

        await asyncio.to_thread(send_spec)
        conn = Connection(read_fd, writable=False)
        threading.Thread(
            target=self._pump,
            args=(index, conn, loop),
            name=f"batchrun-worker-{index}",
            daemon=True,
        ).start()
        return worker

    def _pump(self, index: int, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        """On its own thread: hand worker ``index``'s messages to the loop, then ``gone``."""
        try:
            while True:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    break
                loop.call_soon_threadsafe(self._messages.put_nowait, (index, message))
        finally:
            conn.close()
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
                loop.call_soon_threadsafe(self._messages.put_nowait, (index, ("gone",)))

    async def _supervise(self, db: WorkerDatabase) -> None:
        """Take the workers' messages until every one is gone."""
        while not all(worker.gone for worker in self._workers):
            index, message = await self._messages.get()
            worker = self._workers[index]
            match message:
                case ("ready",):
                    worker.ready = True
                    for signum in worker.pending:
                        _kill(worker, signum)
                    worker.pending.clear()
                case ("event", Note(text=text)):
                    self._say(text)
                case ("log", logging.LogRecord() as record):
                    self._log(record)
                case ("event", Progress(snapshot=snapshot)):
                    worker.snapshot = snapshot
                case ("event", PassFinished(result=done)):
                    worker.snapshot = done.snapshot
                case ("result", RunResult() as result):
                    worker.result = result
                case ("error", BatchrunError() as error):
                    # Said once, when the run raises it; the others stop as on SIGTERM.
                    worker.error = error
                    self._stop_others()
                case ("gone",):
                    await asyncio.to_thread(worker.process.wait)
                    worker.gone = True
                    if worker.result is None and worker.error is None:
                        self._say(self._crash_text(worker))
                        await _release_dead(db)

    def _crash_text(self, worker: _Worker) -> str:
        code = worker.process.returncode
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit code {code}"
        )
        return (
            f"worker process {worker.index + 1} of {self._count} (pid {worker.process.pid}) "
            f"ended without finishing ({how}); what it had in flight went back to the queue"
        )

    def _log(self, record: logging.LogRecord) -> None:
        """A worker's log record, through this process's handlers; once however many
        workers log it (each stopping worker says it stops)."""
        said = (record.name, record.levelno, record.getMessage())
        if said not in self._logged:
            self._logged.add(said)
            logging.getLogger(record.name).handle(record)

    def _say(self, text: str) -> None:
        """A note once, however many workers say it."""
        if text not in self._said:
            self._said.add(text)
            self._emit(Note(text))

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            snapshots = [w.snapshot for w in self._workers if w.snapshot is not None]
            if snapshots:
                self._emit(Progress(combined_snapshot(snapshots)))

    def _paused(self) -> Mapping[str, str]:
        paused: dict[str, str] = {}
        for worker in self._workers:
            if worker.snapshot is not None:
                paused |= worker.snapshot.paused
        return paused

    def _forward(self, signum: signal.Signals) -> None:
        """Pass a signal on to every worker still running (once each)."""
        for worker in self._workers:
            if worker.gone:
                continue
            if worker.ready:
                _kill(worker, signum)
            else:
                worker.pending.append(signum)

    def _stop_others(self) -> None:
        """Ask every worker still running to stop, as a Ctrl-C would (a byte on its pipe)."""
        for worker in self._workers:
            stdin = worker.process.stdin
            if worker.gone or worker.result is not None or stdin is None:
                continue
            with contextlib.suppress(OSError, ValueError):
                stdin.write(b"\n")
                stdin.flush()

    async def _stop_all(self) -> None:
        """However the run ends: no worker outlives it. Those still running (the parent
        failed) are asked to stop as on SIGTERM, then killed after a grace period."""
        running = [w for w in self._workers if w.process.poll() is None]
        for worker in running:
            _kill(worker, signal.SIGTERM)
        for worker in running:
            try:
                await asyncio.to_thread(worker.process.wait, 30)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                await asyncio.to_thread(worker.process.wait)
        for worker in self._workers:
            if worker.process.stdin is not None:
                with contextlib.suppress(OSError):
                    worker.process.stdin.close()

    # -- the end ---------------------------------------------------------------------------

    async def _result(self, db: WorkerDatabase) -> RunResult:
        """The run's result from the workers' own, with the batches as they are now; the
        combined pass is told as one PassFinished (and to the notices)."""
        results = [w.result for w in self._workers if w.result is not None]
        passes = [r.last for r in results if r.last is not None]
        codes = [r.exit_code for r in results]
        if any(w.result is None and w.error is None for w in self._workers):
            codes.append(ExitCode.ERROR)
        waiting: dict[str, WaitingBatch] = {}
        for result in results:
            waiting.update((w.batch_id, w) for w in result.waiting)
        if not passes:
            return RunResult(combined_exit_code(codes, ()), None, 0, tuple(waiting.values()))
        ids: list[str] = []
        budgets: dict[str, float | None] = {}
        held: dict[str, Mapping[str, int]] = {}
        for done in passes:
            ids += [b.id for b in done.batches if b.id not in ids]
            budgets |= done.budgets
            held |= done.held
        report = combined_report([done.report for done in passes])
        batches = tuple([await db.get_batch(batch_id) for batch_id in ids])
        code = combined_exit_code(codes, batches)
        combined = PassResult(
            batches=batches,
            report=report,
            snapshot=combined_snapshot([done.snapshot for done in passes]),
            stopped_by_time_limit=any(done.stopped_by_time_limit for done in passes),
            costs=await batch_costs(db, ids, self._prices),
            budgets=budgets,
            exit_code=code,
            waiting=tuple(waiting.values()),
            held=held,
        )
        if self._notices is not None:
            self._notices.pass_ended(
                batches, costs=combined.costs, paused=report.paused, interrupted=report.interrupted
            )
        self._emit(PassFinished(combined))
        return RunResult(code, combined, 1, tuple(waiting.values()))

    def _raise_failures(self) -> None:
        """A worker's error is the run's; a worker that ended without a result fails it."""
        for worker in self._workers:
            if worker.error is not None:
                raise worker.error
        crashed = [w for w in self._workers if w.result is None and w.error is None]
        if crashed:
            raise WorkerProcessError(self._crash_text(crashed[0]))


def _spawn() -> tuple[subprocess.Popen[bytes], int]:
    """A new worker process in a session of its own, and the end of the pipe it writes its
    messages to."""
    read_fd, write_fd = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_COMMAND.format(root=_PACKAGE_ROOT, fd=write_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return process, read_fd


async def _release_dead(db: WorkerDatabase) -> None:
    """Put the requests that dead processes of this host had claimed back in the queue now,
    so the workers still running send them (their leases need not run out first)."""
    try:
        dead = [owner for owner in await db.lease_owners() if owner and is_dead_here(owner)]
        if dead:
            await db.release_leases(dead)
    except Exception as exc:  # a database hiccup: the leases run out, a later run sends them
        log.warning("could not release the requests of a dead worker: %s", exc)


def _kill(worker: _Worker, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        worker.process.send_signal(signum)


@contextmanager
def _forwarded_signals(
    forward: Callable[[signal.Signals], None], *, enabled: bool
) -> Iterator[None]:
    """While the block runs, Ctrl-C and SIGTERM are passed on to the workers (when enabled,
    and this is the main thread of a platform with signals)."""
    loop = asyncio.get_running_loop()
    installed = []
    if enabled:
        for signum in _SIGNAL_NAMES:
            try:
                loop.add_signal_handler(signum, forward, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
