"""Bar charts and histograms of the report (``charts`` exports them): :func:`bar_chart`
(labelled horizontal bars, e.g. errors by type) and :func:`histogram` (bins of a
distribution, e.g. latencies, with marked percentiles). The data rules and markup hooks are
those of ``charts``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from batchrun.ops.views.report.axes import (
    Scale,
    linear_ticks,
    log_ticks,
    si,
    value_ticks,
    with_unit,
)
from batchrun.ops.views.report.layout import (
    MIN_WIDTH_PX,
    PAD_PX,
    LegendItem,
    Plot,
    empty_chart,
    frame,
    layout,
    plot_area,
    value_axis,
    with_headroom,
    x_axis,
)
from batchrun.ops.views.report.svg import (
    CHAR_WIDTH_PX,
    MARK_COLOUR,
    MARK_DASHES,
    colour,
    element,
    halo,
    shorten,
    text,
    text_width,
)
from batchrun.ops.views.report.svg import title as title_element

BAR_ROW_PX = 22
BAR_THICKNESS_PX = 15
# Bar labels take at most this share of the width (longer ones are cut; the bar's tooltip
# has the whole label).
BAR_LABEL_SHARE = 0.4
MIN_BAR_SPAN_PX = 40
# A histogram is drawn on a log x axis when its edges span more than this ratio (2 decades).
LOG_AXIS_ABOVE_RATIO = 100.0
UNIT_ROW_PX = 18
MARK_ROW_PX = 13
# Labels of marks close together take up to this many rows above the plot.
MARK_ROWS = 3
X_TICK_SPACING_PX = 80


@dataclass(frozen=True)
class Bar:
    """One bar of a bar chart; ``note`` (e.g. an example error message) is its tooltip."""

    label: str
    value: float
    note: str | None = None


def bar_chart(
    *, chart_id: str, title: str, unit: str, bars: Sequence[Bar], width: int = 760
) -> str:
    """Horizontal bars in the given order, each labelled at the left and with its value in
    ``unit`` at its end, the longest bar the highest value; the chart is as tall as its
    rows. Bars of a non-finite value are left out."""
    width = max(width, MIN_WIDTH_PX)
    kept = [(bar, max(bar.value, 0.0)) for bar in bars if math.isfinite(bar.value)]
    items = [LegendItem(unit or title, colour(0), "fill")]
    legend_markup, empty_plot = layout(items, width=width, height=0, rows_px=6)
    top = empty_plot.top
    highest = max((value for _, value in kept), default=0.0)
    if highest == 0:
        return empty_chart(
            chart_id=chart_id,
            title_text=title,
            width=width,
            legend_markup=legend_markup,
            plot=empty_plot,
        )

    label_px = min(max(text_width(bar.label) for bar, _ in kept), BAR_LABEL_SHARE * width)
    label_chars = max(int(label_px // CHAR_WIDTH_PX), 2)
    values = [with_unit(si(value), unit) for _, value in kept]
    bar_left = PAD_PX + label_px + 8
    bar_span = max(width - PAD_PX - max(map(text_width, values)) - 8 - bar_left, MIN_BAR_SPAN_PX)
    rows = []
    for row, ((bar, value), value_text) in enumerate(zip(kept, values, strict=True)):
        y = top + row * BAR_ROW_PX
        length = value / highest * bar_span
        if value > 0:
            length = max(length, 1.0)
        tooltip = f"{bar.label}: {value_text}" + (f"\n{bar.note}" if bar.note else "")
        rect = element(
            "rect",
            title_element(tooltip),
            x=bar_left,
            y=y + (BAR_ROW_PX - BAR_THICKNESS_PX) / 2,
            width=length,
            height=BAR_THICKNESS_PX,
            fill=colour(0),
            data_bar=bar.label,
            data_value=f"{value:g}",
            class_="bar",
        )
        middle = y + BAR_ROW_PX / 2 + 4
        label = shorten(bar.label, label_chars)
        rows += [
            rect,
            text(bar_left - 6, middle, label, anchor="end", class_="bar-label"),
            text(bar_left + length + 4, middle, value_text, class_="value-label"),
        ]
    plot = Plot(bar_left, top, bar_left + bar_span, top + len(kept) * BAR_ROW_PX)
    return frame(
        chart_id=chart_id,
        title_text=title,
        width=width,
        plot=plot,
        body=legend_markup + "".join(rows),
        empty=False,
        bottom_px=PAD_PX,
    )


def histogram(
    *,
    chart_id: str,
    title: str,
    edges: Sequence[float],
    counts: Sequence[int],
    marks: Sequence[tuple[str, float]] = (),
    unit: str = "ms",
    width: int = 760,
    height: int = 220,
) -> str:
    """The bins of a distribution (bin i from ``edges[i]`` to ``edges[i + 1]``, with
    ``counts[i]``), each as wide as its edges: on a log x axis when the edges span more than
    two decades (an edge at or below 0 is drawn at the axis's left end, a decade below the
    smallest positive edge, labelled 0), on a linear axis otherwise. ``marks`` (e.g. p50,
    p90, p99) are labelled vertical lines. A bin with a non-finite edge, or whose edges do
    not increase, is left out.

    Raises ValueError when there are counts and not exactly one edge more than counts.
    """
    if counts and len(edges) != len(counts) + 1:
        raise ValueError(
            f"histogram {chart_id!r}: {len(edges)} edges for {len(counts)} counts; "
            "give one edge more than counts"
        )
    width = max(width, MIN_WIDTH_PX)
    bins = [
        (index, low, high, max(count, 0))
        for index, (low, high, count) in enumerate(
            zip(edges[:-1], edges[1:], counts, strict=True) if counts else ()
        )
        if math.isfinite(low) and math.isfinite(high) and high > low
    ]
    kept_marks = sorted(((label, v) for label, v in marks if math.isfinite(v)), key=lambda m: m[1])
    items = [LegendItem("count per bin", colour(0), "fill")]
    items += [LegendItem(label, MARK_COLOUR, "mark") for label, _ in kept_marks]
    mark_rows = min(len(kept_marks), MARK_ROWS)
    rows_px = UNIT_ROW_PX + mark_rows * MARK_ROW_PX
    legend_markup, plot = layout(items, width=width, height=height, rows_px=rows_px)
    if not any(count for *_, count in bins):
        return empty_chart(
            chart_id=chart_id, title_text=title, width=width, legend_markup=legend_markup, plot=plot
        )

    x_scale, x_ticks = _bin_axis(bins, plot, unit)
    top_count = float(max(count for *_, count in bins))
    y_ticks, step = value_ticks(with_headroom(top_count), integer=True)
    y_scale = Scale(0.0, y_ticks[-1], plot.bottom, plot.top)
    parts = [
        legend_markup,
        plot_area(plot),
        value_axis(plot, y_ticks, step, y_scale),
        x_axis(plot, x_ticks, width),
        text(PAD_PX, plot.top - mark_rows * MARK_ROW_PX - 8, "count", class_="unit-label"),
    ]
    for index, low, high, count in bins:
        left, top = x_scale(low), y_scale(count)
        parts.append(
            element(
                "rect",
                title_element(f"{with_unit(f'{si(low)}–{si(high)}', unit)}: {count}"),
                x=left,
                y=top,
                width=x_scale(high) - left,
                height=plot.bottom - top,
                fill=colour(0),
                stroke="#FFFFFF",
                stroke_width=0.5,
                data_bin=index,
                data_count=count,
                class_="bin",
            )
        )
    parts.append(_marks(kept_marks, plot, x_scale, unit, width))
    return frame(
        chart_id=chart_id,
        title_text=title,
        width=width,
        plot=plot,
        body="".join(parts),
        empty=False,
    )


def _bin_axis(
    bins: list[tuple[int, float, float, int]], plot: Plot, unit: str
) -> tuple[Scale, list[tuple[float, str]]]:
    """The x scale of a histogram, log or linear, and its labelled ticks (pixels, label)."""
    low = min(b[1] for b in bins)
    high = max(b[2] for b in bins)
    max_ticks = max(int((plot.right - plot.left) // X_TICK_SPACING_PX), 2)
    positive = [edge for b in bins for edge in b[1:3] if edge > 0]
    if positive and high / min(positive) > LOG_AXIS_ABOVE_RATIO:
        smallest = min(positive)
        from_zero = low <= 0 and smallest / 10 > 0
        axis_low = smallest / 10 if from_zero else smallest
        scale = Scale(axis_low, high, plot.left, plot.right, log=True)
        values = [t for t in log_ticks(axis_low, high, max_ticks=max_ticks) if t > axis_low * 1.5]
        ticks = [(scale(t), with_unit(si(t), unit)) for t in values]
        if from_zero or not values or values[0] > axis_low * 1.5:
            start = "0" if from_zero else si(axis_low)
            ticks.insert(0, (plot.left, with_unit(start, unit)))
        return scale, ticks
    scale = Scale(low, high, plot.left, plot.right)
    values, step = linear_ticks(low, high, count=max_ticks)
    return scale, [(scale(t), with_unit(si(t, step), unit)) for t in values]


def _marks(
    marks: list[tuple[str, float]], plot: Plot, x_scale: Scale, unit: str, width: float
) -> str:
    """Vertical lines at the marks, labelled above the plot; labels that would overlap go
    one row up (up to :data:`MARK_ROWS`)."""
    parts, row_ends = [], [-math.inf] * MARK_ROWS
    for label, value in marks:
        x = x_scale(value)
        caption = f"{label} {with_unit(si(value), unit)}"
        parts.append(
            element(
                "line",
                title_element(caption),
                x1=x,
                x2=x,
                y1=plot.top,
                y2=plot.bottom,
                stroke=MARK_COLOUR,
                stroke_width=1.5,
                stroke_dasharray=MARK_DASHES,
                data_mark=label,
                class_="mark",
            )
        )
        half = text_width(caption) / 2
        middle = min(max(x, half + 2), width - half - 2)
        free = [row for row, end in enumerate(row_ends) if middle - half > end + 4]
        row = free[0] if free else min(range(MARK_ROWS), key=row_ends.__getitem__)
        row_ends[row] = middle + half
        baseline = plot.top - 4 - row * MARK_ROW_PX
        parts.append(
            text(middle, baseline, caption, anchor="middle", class_="mark-label", **halo())
        )
    return "".join(parts)
