"""A run's pass reads as plan → dispatch → summarise, and its side tasks (progress, notices,
the forever joiner, the batch lane) live on the dispatch's exit stack: named while they run,
gone when the pass is. The in-process simulator, a real database, virtual time (looptime)."""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap

import pytest

from batchrun.config.prices import PriceTable
from batchrun.ops import forever
from batchrun.ops.passes import PassRunner
from batchrun.ops.session import PassFinished, Progress, RunEvent, RunOptions, RunSession
from batchrun.store.store import Store
from batchrun.transport.endpoints import resolve_endpoints
from tests.conftest import request_line, submit


def _awaited_calls(function: object) -> list[str]:
    """The names of the calls a function awaits, in order."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Await) and isinstance(node.value, ast.Call):
            func = node.value.func
            names.append(func.attr if isinstance(func, ast.Attribute) else ast.unparse(func))
    return names


def test_a_pass_is_plan_then_dispatch_then_summarise() -> None:
    assert _awaited_calls(PassRunner.run_pass) == ["_plan", "_dispatch", "_summarise"]


def test_the_forever_joiner_lives_in_its_own_module() -> None:
    assert forever.ForeverJoiner.__module__ == "batchrun.ops.forever"
    for cls in (RunSession, PassRunner):
        assert not [name for name in vars(cls) if "join" in name and name != "_joiner"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_passes_side_tasks_run_named_and_end_with_it(sqlite_store: Store) -> None:
    batch_id = submit(sqlite_store, [request_line(f"r{i}") for i in range(4)])
    seen: set[str] = set()
    events: list[RunEvent] = []

    def watch(event: RunEvent) -> None:
        events.append(event)
        if isinstance(event, Progress):
            seen.update(
                task.get_name()
                for task in asyncio.all_tasks()
                if task.get_name().startswith("batchrun-")
            )
        if isinstance(event, PassFinished):
            session.stop("the test has seen a pass")

    session = RunSession(
        sqlite_store,
        known=resolve_endpoints({}, {}),
        prices=PriceTable(),
        env={},
        options=RunOptions(
            forever=True,
            poll_interval_s=1,
            max_runtime_s=60,
            progress_interval_s=0.5,
            stop_on_signals=False,
        ),
        on_event=watch,
    )
    result = await session.run()
    left = {task.get_name() for task in asyncio.all_tasks() if task.get_name() in seen}

    assert {"batchrun-watch", "batchrun-join"} <= seen
    assert left == set()
    assert result.last is not None and {b.id for b in result.last.batches} == {batch_id}
    assert result.last.batches[0].counts.succeeded == 4


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_stop_that_comes_before_the_dispatch_starts_stops_it(sqlite_store: Store) -> None:
    # A worker of `run --processes` can be told to stop while it plans (a Ctrl-C as it
    # starts); so can a run with many batches to plan. Nothing may be sent after it.
    batch_id = submit(sqlite_store, [request_line(f"r{i}") for i in range(50)])
    session = RunSession(
        sqlite_store,
        known=resolve_endpoints({}, {}),
        prices=PriceTable(),
        env={},
        options=RunOptions(stop_on_signals=False),
    )
    session.stop("interrupted by Ctrl-C")

    result = await session.run()

    assert result.last is not None
    assert result.last.report.interrupted == "interrupted by Ctrl-C"
    assert result.last.report.sent == 0
    assert sqlite_store.batches.get(batch_id).counts.processing == 50
