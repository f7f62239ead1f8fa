"""One worker process of ``run --processes N`` (the child side of :mod:`batchrun.ops.processes`).

The parent starts ``python -c "from batchrun.ops.worker_process import main; main(FD)"`` in
a session of its own (so a Ctrl-C on the terminal reaches the parent only, which passes it
on: one Ctrl-C there is one here, and a second one stops at once). Over the child's
standard input it sends one :class:`WorkerSpec` (a length, then the pickled spec) and then
nothing, keeping the pipe open: when the parent ends, however it ends (kill -9 included),
the pipe reaches its end and the worker stops as on SIGTERM, recording what is in flight and
leaving the rest queued. Everything the worker has to say (its run's events, its result,
or the :class:`~batchrun.errors.BatchrunError` that ended it) goes back as pickled
messages over the descriptor ``FD``; it prints nothing itself
(a bug's traceback still reaches stderr, which is the parent's).

Messages (tuples): ``("ready",)`` once it keeps signals (the parent passes them on from
then), ``("event", RunEvent)`` and ``("log", LogRecord)`` as they come, then
``("result", RunResult)`` or ``("error", BatchrunError)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType

from batchrun.config.prices import PriceTable
from batchrun.errors import BatchrunError
from batchrun.ops.run_types import RunEvent, RunOptions, RunResult
from batchrun.transport.endpoints import Endpoints

# Why a worker stops when the parent writes a byte after the spec.
STOP_REASON = "stopped because another worker process of this run failed"
# The spec's length on the standard input: 8 bytes, big-endian.
SPEC_LENGTH = struct.Struct(">Q")
_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process runs: worker ``index`` (from 0) of ``count``, on the database
    at ``database_url``, with the parent's endpoints, prices, environment and options."""

    index: int
    count: int
    parent_pid: int
    database_url: str
    known: Endpoints
    prices: PriceTable
    env: dict[str, str]
    options: RunOptions
    # The parent's log level: the worker's log records go to the parent's handlers.
    log_level: int = logging.WARNING


def encode_spec(spec: WorkerSpec) -> bytes:
    """What the parent writes on a worker's standard input."""
    body = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
    return SPEC_LENGTH.pack(len(body)) + body


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("the parent closed the pipe before the worker's spec was read")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main(fd: int) -> None:
    """The worker's entry point: read the spec, run, tell the parent how it ended (over the
    descriptor ``fd``)."""
    # Signals that come before the run listens are kept and replayed once it does.
    early: list[str] = []

    def keep(signum: int, _frame: FrameType | None) -> None:
        early.append(_SIGNALS.get(signal.Signals(signum), "a signal"))

    for signum in _SIGNALS:
        signal.signal(signum, keep)
    conn = Connection(fd, readable=False)
    # From here on a signal is kept: the parent may pass them on.
    _send(conn, ("ready",))
    try:
        (length,) = SPEC_LENGTH.unpack(_read_exactly(0, SPEC_LENGTH.size))
        spec: WorkerSpec = pickle.loads(_read_exactly(0, length))
    except EOFError:
        # The parent went away before it said what to do: there is nothing to do.
        sys.exit(1)
    root = logging.getLogger()
    root.handlers = [_ToParent(conn)]
    root.setLevel(spec.log_level)
    try:
        result = asyncio.run(_run(spec, conn, early))
    except BatchrunError as exc:
        _send(conn, ("error", _portable(exc)))
        sys.exit(int(exc.exit_code))
    _send(conn, ("result", result))
    conn.close()
    sys.exit(int(result.exit_code))


async def _run(spec: WorkerSpec, conn: Connection, early: list[str]) -> RunResult:
    from batchrun.ops.session import RunSession
    from batchrun.store.store import Store

    def on_event(event: RunEvent) -> None:
        _send(conn, ("event", event))

    store = await asyncio.to_thread(Store.open, spec.database_url)
    try:
        session = RunSession(
            store,
            known=spec.known,
            prices=spec.prices,
            env=spec.env,
            options=spec.options,
            on_event=on_event,
        )
        loop = asyncio.get_running_loop()

        def from_parent() -> None:
            try:
                said = os.read(0, 64)
            except OSError:
                said = b""
            if said:
                session.stop(STOP_REASON)
            else:
                loop.remove_reader(0)
                session.stop(f"the parent `batchrun run` (pid {spec.parent_pid}) ended")

        def replay() -> None:
            # By now the session listens to signals itself (see RunSession.run).
            for name in early:
                session.stop(f"interrupted by {name}")
            early.clear()

        loop.add_reader(0, from_parent)
        loop.call_soon(replay)
        try:
            return await session.run()
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(0)
    finally:
        await asyncio.to_thread(store.close)


def _portable(error: BatchrunError) -> BatchrunError:
    """``error`` if it crosses a pipe intact (its class and attributes), else a plain
    BatchrunError with its message and exit code."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        plain = BatchrunError(error.message)
        plain.exit_code = error.exit_code
        return plain
    return error


class _ToParent(logging.Handler):
    """Sends each log record to the parent, which logs it with its own handlers (its format,
    its key redaction), so a worker's warning reads as the run's."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = _FORMATTER.formatException(record.exc_info) if record.exc_info else None
            plain = logging.makeLogRecord(
                record.__dict__
                | {"msg": record.getMessage(), "args": None, "exc_info": None, "exc_text": text}
            )
            _send(self._conn, ("log", plain))
        except Exception:
            self.handleError(record)


_FORMATTER = logging.Formatter()
# The database thread logs too: one message at a time on the pipe.
_SENDING = threading.Lock()


def _send(conn: Connection, message: tuple[object, ...]) -> None:
    """Tell the parent; nothing when it is gone (the run stops by itself then)."""
    with _SENDING, contextlib.suppress(OSError):
        conn.send(message)
