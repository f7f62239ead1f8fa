"""`Client.run` shows live progress in a notebook: text lines on a stream (a real run on the
in-process simulator, a real database, short real time), an ipywidgets bar fed by the same
run's events, and the detection that decides the default (on in an IPython kernel only)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

import batchrun
from batchrun.errors import ExitCode
from batchrun.ops.run_types import RunEvent
from batchrun.ops.views.notebook import (
    TextProgress,
    WidgetProgress,
    notebook_kernel,
    progress_display,
)
from tests.conftest import request_line

_LINE = re.compile(
    r"^(?P<done>[\d,]+)/(?P<total>[\d,]+) done \(\d+%\) · \S+ requests/min"
    r"( · binding: \S+ \S+ \(\d+%\) on \S+ \S+)?( · [\d,]+ errored)? · ETA \S+ · cost \S+"
)


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[batchrun.Client]:
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def slow_batch(client: batchrun.Client, count: int) -> str:
    """A batch whose answers each take a little real time."""
    batch = client.submit(
        [request_line(f"q{i:02d}", "[[sim:latency=0.02]] hi") for i in range(count)],
        endpoint="simulator",
    )
    return batch.id


def test_text_progress_on_a_stream_counts_up_to_the_end_with_rate_limit_eta_and_cost(
    client: batchrun.Client,
) -> None:
    batch_id = slow_batch(client, 10)
    out = io.StringIO()
    events: list[RunEvent] = []

    result = client.run(
        batch_id,
        limits={"rpm": 60_000},
        max_concurrency=2,
        progress_stream=out,
        progress_interval_s=0.05,
        on_event=events.append,  # the caller's own handler still gets every event
        stop_on_signals=False,
    )

    assert result.exit_code == ExitCode.OK
    lines = [line for line in out.getvalue().splitlines() if _LINE.match(line)]
    assert len(lines) >= 3, out.getvalue()
    done = [int(_LINE.match(line)["done"].replace(",", "")) for line in lines]  # type: ignore[index]
    assert done == sorted(done) and done[-1] == 10
    assert lines[-1].startswith("10/10 done (100%)")
    assert any(" · binding: rpm " in line and "/60k" in line for line in lines), lines
    # A line when requests ended (and the last); not one per update while the rate moves.
    assert len(set(done)) >= len(done) - 1
    assert len(events) >= len(lines)


def test_no_progress_is_shown_outside_a_notebook_unless_asked(
    client: batchrun.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = slow_batch(client, 3)
    client.run(quiet, progress_interval_s=0.02, stop_on_signals=False)
    assert capsys.readouterr().err == ""

    refused = io.StringIO()
    off = slow_batch(client, 3)
    client.run(off, progress=False, progress_stream=refused, stop_on_signals=False)
    assert refused.getvalue() == ""

    asked = slow_batch(client, 3)
    client.run(asked, progress=True, progress_interval_s=0.02, stop_on_signals=False)
    assert "3/3 done (100%)" in capsys.readouterr().err


def test_the_widget_follows_the_same_run_to_its_end(client: batchrun.Client) -> None:
    batch_id = slow_batch(client, 6)
    shown: list[Any] = []
    widget = WidgetProgress(display=shown.append)
    text = io.StringIO()
    line = TextProgress(text)

    def both(event: RunEvent) -> None:
        widget(event)
        line(event)

    client.run(
        batch_id, on_event=both, progress=False, progress_interval_s=0.05, stop_on_signals=False
    )

    assert shown == [widget.box]
    assert (widget.bar.value, widget.bar.max) == (6, 6)
    assert widget.bar.bar_style == "success"
    # The widget's figures are the text display's last line, from the same snapshot.
    assert widget.figures.value == text.getvalue().splitlines()[-1].replace("&", "&amp;")


def _ipython(shell: object, *, raises: bool = False) -> dict[str, ModuleType]:
    module = ModuleType("IPython")

    def get_ipython() -> object:
        if raises:
            raise RuntimeError("no shell")
        return shell

    module.get_ipython = get_ipython  # type: ignore[attr-defined]
    return {"IPython": module}


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        ({}, False),  # IPython never imported: a script
        (_ipython(None), False),  # imported, but no shell running
        (_ipython(SimpleNamespace()), False),  # terminal IPython: a shell without a kernel
        (_ipython(SimpleNamespace(kernel=None)), False),
        (_ipython(SimpleNamespace(kernel=object()), raises=True), False),
        (_ipython(SimpleNamespace(kernel=object())), True),  # Jupyter, VS Code, Colab
    ],
)
def test_a_notebook_is_an_ipython_shell_with_a_kernel(
    modules: dict[str, ModuleType], expected: bool
) -> None:
    assert notebook_kernel(modules) is expected


def test_text_lines_wait_for_requests_to_end_or_for_the_quiet_interval() -> None:
    from batchrun.config.prices import CostTotal
    from batchrun.ops.monitor import ProgressSnapshot
    from batchrun.ops.run_types import Progress

    def snapshot_of(*, done: int, total: int, requests_per_min: float) -> ProgressSnapshot:
        zero = dict.fromkeys(
            ["succeeded", "errored", "canceled", "retried", "rate_limited", "in_flight"], 0
        )
        return ProgressSnapshot(
            elapsed_s=1.0,
            total=total,
            done=done,
            waiting=0,
            requests_per_min=requests_per_min,
            tokens_per_min=0.0,
            input_tokens=0,
            output_tokens=0,
            cache_creation_input_tokens=0,
            cache_read_input_tokens=0,
            cost=CostTotal(),
            eta_s=None,
            keys=(),
            **zero,
        )

    now = [0.0]
    out = io.StringIO()
    text = TextProgress(out, quiet_s=30.0, clock=lambda: now[0])
    for second, done in [(1, 0), (2, 0), (3, 1), (4, 1), (20, 1), (34, 1), (35, 2)]:
        now[0] = float(second)
        text(Progress(snapshot_of(done=done, total=5, requests_per_min=second)))

    written = [line.split(" · ")[0] for line in out.getvalue().splitlines()]
    # 1 s: the first; 3 s: one ended; 34 s: 31 s without one; 35 s: another ended.
    assert written == ["0/5 done (0%)", "1/5 done (20%)", "1/5 done (20%)", "2/5 done (40%)"]


def test_the_display_chosen_for_each_setting(capsys: pytest.CaptureFixture[str]) -> None:
    kernel = _ipython(SimpleNamespace(kernel=object()))
    stream = io.StringIO()

    assert progress_display(None, None, modules={}) is None
    assert progress_display(False, stream, modules=kernel) is None
    assert isinstance(progress_display(None, stream, modules={}), TextProgress)
    assert isinstance(progress_display(True, None, modules={}), TextProgress)
    assert isinstance(progress_display(None, stream, modules=kernel), TextProgress)
    # In a kernel with ipywidgets installed (the test extra has it): the widget, displayed.
    assert isinstance(progress_display(None, None, modules=kernel), WidgetProgress)
    assert "VBox" in capsys.readouterr().out
