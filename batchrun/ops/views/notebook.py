"""A run's live progress for the Python API: a widget in a notebook, text lines elsewhere.

``Client.run``/``arun`` show progress when ``progress`` is true, or when it is None (the
default) and the code runs in an IPython kernel (Jupyter, VS Code, Colab): `notebook_kernel`
tells. With ipywidgets importable in a kernel the display is a progress bar and a line of
figures, updated in place (`WidgetProgress`); otherwise, or when a stream is given, it is
text lines on that stream (stderr by default; `TextProgress`): one when requests have ended
since the last, at most one per update, and one every 30 s while none do. Outside a
kernel nothing is shown unless asked: a script's output stays as it was.

Both are fed by the run's events (:data:`batchrun.ops.session.RunEvent`): a ``Progress``
event per ``progress_interval_s`` (1 s unless the caller gives another) and the pass's end.
Their figures are the run monitor's snapshot, worded by :mod:`batchrun.ops.views.progress`,
the functions the CLI's progress lines use.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import IO, Any, Final

from batchrun.ops.monitor import ProgressSnapshot
from batchrun.ops.run_types import Note, PassFinished, Progress, RunEvent
from batchrun.ops.views.progress import short_progress_line

# How often a notebook display is fed, unless the run is given a progress interval.
NOTEBOOK_INTERVAL_S: Final = 1.0
# The text display writes a line while no request ends at most this often.
TEXT_QUIET_S: Final = 30.0


def notebook_kernel(modules: Mapping[str, ModuleType] | None = None) -> bool:
    """Whether this process is an IPython kernel (a notebook's, not a terminal IPython):
    IPython is loaded and its running shell has a kernel. ``modules`` is ``sys.modules``
    unless given."""
    ipython = (sys.modules if modules is None else modules).get("IPython")
    get_ipython: Callable[[], Any] | None = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:  # an IPython that cannot say is not a kernel we can draw in
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def widgets_available() -> bool:
    """Whether ipywidgets can be imported (``pip install 'batchrun-llm[notebook]'``)."""
    return importlib.util.find_spec("ipywidgets") is not None


class TextProgress:
    """Progress as text lines on ``stream``: a line when the count of ended requests moves
    (at most one per update), else one every ``quiet_s`` while the run waits, a last one when
    a pass ends; and the run's notes. ``clock`` reads seconds (monotonic)."""

    def __init__(
        self,
        stream: IO[str],
        *,
        quiet_s: float = TEXT_QUIET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._quiet_s = quiet_s
        self._clock = clock
        self._last: tuple[int, int, int] | None = None
        self._last_at = 0.0

    def __call__(self, event: RunEvent) -> None:
        match event:
            case Progress(snapshot=snapshot):
                self._show(snapshot, last=False)
            case PassFinished(result=result):
                counts = {batch.id: batch.counts for batch in result.batches}
                self._show(result.snapshot.recounted(counts), last=True)
            case Note(text=text):
                self._write(text)

    def _show(self, snapshot: ProgressSnapshot, *, last: bool) -> None:
        # Rates and ETAs move on every update; a line is worth writing when requests end,
        # or now and then while nothing does (so a long wait is seen to be one).
        counts = (snapshot.done, snapshot.errored, snapshot.total)
        now = self._clock()
        if last or counts != self._last or now - self._last_at >= self._quiet_s:
            self._last, self._last_at = counts, now
            self._write(short_progress_line(snapshot))

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


class WidgetProgress:
    """Progress as an ipywidgets bar and a line of figures, displayed once and updated in
    place; the run's notes on a line below it."""

    def __init__(self, display: Callable[[Any], Any] | None = None) -> None:
        import ipywidgets

        self.bar = ipywidgets.IntProgress(value=0, min=0, max=1, description="batchrun")
        self.figures = ipywidgets.HTML(value="starting…")
        self.notes = ipywidgets.HTML(value="")
        self.box = ipywidgets.VBox([self.bar, self.figures, self.notes])
        if display is None:
            from IPython.display import display as ipython_display

            display = ipython_display
        display(self.box)

    def __call__(self, event: RunEvent) -> None:
        match event:
            case Progress(snapshot=snapshot):
                self._show(snapshot)
            case PassFinished(result=result):
                counts = {batch.id: batch.counts for batch in result.batches}
                self._show(result.snapshot.recounted(counts))
                self.bar.bar_style = "success" if result.exit_code == 0 else "warning"
            case Note(text=text):
                self.notes.value = _escaped(text)

    def _show(self, snapshot: ProgressSnapshot) -> None:
        self.bar.max = max(snapshot.total, 1)
        self.bar.value = min(snapshot.done, self.bar.max)
        self.figures.value = _escaped(short_progress_line(snapshot))


def _escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def progress_display(
    progress: bool | None,
    stream: IO[str] | None,
    *,
    modules: Mapping[str, ModuleType] | None = None,
) -> Callable[[RunEvent], None] | None:
    """The display a run gets: None when ``progress`` is False, or None and not in a
    kernel; a `TextProgress` on ``stream`` when one is given; else a `WidgetProgress` in a
    kernel with ipywidgets, a `TextProgress` on stderr otherwise."""
    if progress is False:
        return None
    in_kernel = notebook_kernel(modules)
    if progress is None and not in_kernel and stream is None:
        return None
    if stream is None and in_kernel and widgets_available():
        return WidgetProgress()
    return TextProgress(sys.stderr if stream is None else stream)


def with_display(
    on_event: Callable[[RunEvent], None] | None, display: Callable[[RunEvent], None]
) -> Callable[[RunEvent], None]:
    """An event handler that feeds ``display`` and then the caller's ``on_event``."""

    def both(event: RunEvent) -> None:
        display(event)
        if on_event is not None:
            on_event(event)

    return both
