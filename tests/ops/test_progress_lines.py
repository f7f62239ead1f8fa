"""What the plain progress lines of `batchrun run` say, from a real run (RunSession on the
in-process simulator, a real database, virtual time) through the CLI's display: cancels from
elsewhere, the last error and the last retry in their own places, the request rate of a run
full of 400s, and the batch lane's imports."""

from __future__ import annotations

import asyncio
import io
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import event

from batchrun.cli.progress import RunDisplay
from batchrun.config.prices import PriceTable
from batchrun.input.ingest import submit_requests
from batchrun.limits.dimensions import RateLimits
from batchrun.ops.session import RunEvent, RunOptions, RunResult, RunSession
from batchrun.store.store import Store
from batchrun.transport.endpoints import resolve_endpoints
from tests.conftest import jsonl, request_line, submit

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


class Shown:
    """A run's events as the CLI shows them without a terminal, each line with the loop
    time it was shown at."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        self.display = RunDisplay(
            Console(file=self.out, width=400), live=False, quiet=False, as_json=False
        )
        self.timed: list[tuple[float, str]] = []

    def __call__(self, event: RunEvent) -> None:
        start = len(self.out.getvalue())
        self.display(event)
        now = asyncio.get_running_loop().time()
        self.timed += [(now, line) for line in self.out.getvalue()[start:].splitlines()]

    @property
    def progress(self) -> list[str]:
        return [line for _, line in self.timed if " progress: " in line]


def session(store: Store, shown: Shown, **options: Any) -> RunSession:
    return RunSession(
        store,
        known=resolve_endpoints({}, {}),
        prices=PriceTable(),
        env={},
        options=RunOptions(stop_on_signals=False, **options),
        on_event=shown,
    )


def figure(pattern: str, line: str) -> float:
    """A number of ``line`` as the progress line writes it (``480``, ``5.2k``)."""
    found = re.search(pattern, line)
    assert found is not None, f"{pattern!r} not in {line!r}"
    text = found[1]
    return float(text.removesuffix("k")) * (1000 if text.endswith("k") else 1)


async def test_a_cancel_from_elsewhere_is_counted_in_full_in_the_progress_lines(
    store: Store,
) -> None:
    batch_id = submit(store, [request_line(f"r{i:04d}") for i in range(2000)])
    # Another batch of the run, which goes on after the cancel.
    other = submit(store, [request_line(f"s{i:04d}", "[[sim:latency=30]] slow") for i in range(3)])
    shown = Shown()
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(
        session(store, shown, overrides=RateLimits(rpm=600), progress_interval_s=5).run()
    )
    await asyncio.sleep(12)

    # What `batchrun cancel` does from another terminal.
    store.lifecycle.cancel(batch_id, datetime.now(UTC))
    canceled_at = loop.time()
    result: RunResult = await running

    counts = store.batches.get(batch_id).counts
    assert counts.canceled > 1800
    assert store.batches.get(other).counts.succeeded == 3
    assert result.exit_code == 7
    last = shown.progress[-1]
    assert f"2,003/2,003 done ({counts.succeeded + 3:,} succeeded, 0 errored, " in last
    assert f"{counts.canceled:,} canceled since the run started" in last
    # The periodic lines a second or more after the cancel count it too.
    later = [line for at, line in shown.timed if " progress: " in line and at > canceled_at + 1]
    assert len(later) >= 3
    assert all(f"{counts.canceled:,} canceled" in line for line in later)


async def test_lines_far_apart_read_the_batch_counts_once_per_line_not_every_second(
    store: Store,
) -> None:
    submit(store, [request_line(f"r{i:04d}") for i in range(400)])
    shown = Shown()
    reads: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # A batch's counts read (Batches.get): every column of one batch by its id.
        flat = " ".join(statement.split())
        if flat.startswith("SELECT batches.id, ") and "WHERE batches.id = " in flat:
            reads.append(flat)

    event.listen(store.engine, "before_cursor_execute", seen)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        # 400 requests at 600 a minute: a run of about 40 s, progress lines every 30 s.
        await session(store, shown, overrides=RateLimits(rpm=600), progress_interval_s=30).run()
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)

    assert loop.time() - began > 35
    assert len(shown.progress) == 3  # at once, after 30 s, and the last
    # One read per line, and the run's own planning and summary (read every second during
    # the run, it was over 40).
    assert len(reads) <= 10, reads
    assert "400/400 done (400 succeeded" in shown.progress[-1]


async def test_the_last_error_is_shown_with_the_errors_and_not_with_the_rate_limits(
    store: Store,
) -> None:
    lines = [
        request_line("limited", "[[sim:status=429:times=1]] once"),
        *[request_line(f"ok{i}") for i in range(3)],
        request_line("bad", "[[sim:status=400]] refused", max_tokens=10),
    ]
    batch_id = submit(store, lines)
    shown = Shown()

    await session(store, shown, progress_interval_s=60).run()

    assert store.batches.get(batch_id).counts.errored == 1
    last = shown.progress[-1]
    assert "1 errored (last: invalid_request_error)" in last
    assert "1 retried, 1 rate-limited (last retry: HTTP 429 rate_limit_error)" in last
    assert "rate-limited (last: invalid_request_error)" not in last


# The rate shown is the display's arithmetic, not SQL: SQLite only.
@pytest.mark.sqlite_only
async def test_requests_per_minute_counts_every_answer_of_a_short_run_full_of_400s(
    store: Store,
) -> None:
    # 190 requests, most of them refused with a 400, under 1,080 a minute: a run of about 2.8 s
    # (950 under 5,400 a minute, as this test had before, took 2.6 s).
    lines = [
        request_line(f"r{i:04d}", "[[sim:status=400]] no" if i % 10 else "yes") for i in range(190)
    ]
    submit(store, lines)
    shown = Shown()
    loop = asyncio.get_running_loop()
    began = loop.time()

    await session(store, shown, overrides=RateLimits(rpm=1080), progress_interval_s=60).run()

    took_s = loop.time() - began
    measured = figure(r"; ([\d.]+k?) requests/min", shown.progress[-1])
    assert took_s > 2
    assert measured == pytest.approx(190 * 60 / took_s, rel=0.1)


async def test_results_the_batch_lane_imports_are_counted_as_done(store: Store) -> None:
    batch_id = submit_requests(
        store,
        io.BytesIO(jsonl([request_line(f"c{i}") for i in range(5)])),
        source="test.jsonl",
        endpoint="simulator",
        now=datetime.now(UTC),
        lane="batch",
    )
    shown = Shown()

    await session(store, shown, poll_interval_s=1, progress_interval_s=1).run()

    assert store.batches.get(batch_id).counts.succeeded == 5
    (imported_at,) = [at for at, line in shown.timed if "imported: 5 results" in line]
    # The last line, and any periodic one a second or more after the import.
    later = [line for at, line in shown.timed if " progress: " in line and at > imported_at + 1]
    for line in [*later, shown.progress[-1]]:
        assert "5/5 done (5 succeeded, 0 errored, 0 canceled" in line
