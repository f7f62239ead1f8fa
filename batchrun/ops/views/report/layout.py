"""The parts every chart of the report shares: the ``<svg>`` frame, the legend above the
plot, the plot area, the value (y) axis, an x axis of labelled ticks, the empty chart.

A chart is laid out top down: the legend (as many rows as it needs), rows the chart asks
for (a unit label, mark labels), the plot area, the x axis labels. The height a caller asks
for is the whole; it grows when the legend leaves less than :data:`MIN_PLOT_HEIGHT_PX`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from batchrun.ops.views.report.axes import Scale, coord, si
from batchrun.ops.views.report.svg import (
    AXIS_COLOUR,
    FONT_FAMILY,
    FONT_SIZE_PX,
    GRID_COLOUR,
    MARK_DASHES,
    SVG_NS,
    THRESHOLD_DASHES,
    element,
    shorten,
    text,
    text_width,
    title,
)

MIN_WIDTH_PX = 320
PAD_PX = 8
MARGIN_LEFT_PX = 56
MARGIN_RIGHT_PX = 16
MARGIN_BOTTOM_PX = 30
MIN_PLOT_HEIGHT_PX = 60
LEGEND_ROW_PX = 16
LEGEND_SWATCH_PX = 14
# Longer legend labels are cut (the whole label is the item's tooltip).
LEGEND_LABEL_CHARS = 48
# The value axis ends at least this much above the highest value.
HEADROOM = 1.05


def with_headroom(value: float) -> float:
    """``value`` raised by :data:`HEADROOM`, where a value axis may end at the least."""
    raised = value * HEADROOM
    return raised if math.isfinite(raised) else value


@dataclass(frozen=True)
class LegendItem:
    """One entry of a legend: a swatch drawn in ``style`` and a label."""

    label: str
    colour: str
    style: Literal["fill", "line", "dashed", "binding", "mark"]


@dataclass(frozen=True)
class Plot:
    """The plot area, in pixels from the top left of the chart."""

    left: float
    top: float
    right: float
    bottom: float


def _swatch(item: LegendItem, x: float, baseline: float) -> str:
    middle = baseline - 4
    if item.style == "fill":
        return element(
            "rect", x=x, y=middle - 5, width=LEGEND_SWATCH_PX, height=10, fill=item.colour
        )
    dashes = {"dashed": THRESHOLD_DASHES, "mark": MARK_DASHES}.get(item.style)
    stroke_width = {"line": 2.0, "binding": 3.0}.get(item.style, 1.5)
    return element(
        "line",
        x1=x,
        x2=x + LEGEND_SWATCH_PX,
        y1=middle,
        y2=middle,
        stroke=item.colour,
        stroke_width=stroke_width,
        stroke_dasharray=dashes,
    )


def legend(items: Sequence[LegendItem], *, x: float, y: float, width: float) -> tuple[str, float]:
    """A legend from (x, y) across ``width`` pixels, wrapped onto as many rows as it needs;
    its markup and its height."""
    if not items:
        return "", 0.0
    parts, left, row = [], x, 0
    for item in items:
        label = shorten(item.label, LEGEND_LABEL_CHARS)
        item_width = LEGEND_SWATCH_PX + 5 + text_width(label) + 14
        if left > x and left + item_width > x + width:
            left, row = x, row + 1
        baseline = y + (row + 1) * LEGEND_ROW_PX - 3
        swatch = _swatch(item, left, baseline)
        label_text = text(left + LEGEND_SWATCH_PX + 5, baseline, label)
        parts.append(element("g", title(item.label) + swatch + label_text, class_="legend-item"))
        left += item_width
    return element("g", "".join(parts), class_="legend"), (row + 1) * LEGEND_ROW_PX


def layout(
    items: list[LegendItem], *, width: float, height: float, rows_px: float
) -> tuple[str, Plot]:
    """The legend's markup and the plot area under it and ``rows_px`` more."""
    markup, legend_px = legend(items, x=PAD_PX, y=PAD_PX, width=width - 2 * PAD_PX)
    top = PAD_PX + legend_px + rows_px
    bottom = max(height, top + MIN_PLOT_HEIGHT_PX + MARGIN_BOTTOM_PX) - MARGIN_BOTTOM_PX
    return markup, Plot(MARGIN_LEFT_PX, top, width - MARGIN_RIGHT_PX, bottom)


def frame(
    *,
    chart_id: str,
    title_text: str,
    width: float,
    plot: Plot,
    body: str,
    empty: bool,
    bottom_px: float = MARGIN_BOTTOM_PX,
) -> str:
    """The ``<svg>`` element of a chart around its ``body``, ``bottom_px`` taller than its
    plot area reaches."""
    height = plot.bottom + bottom_px
    return element(
        "svg",
        title(title_text) + body,
        xmlns=SVG_NS,
        id=chart_id,
        class_="chart",
        role="img",
        viewBox=f"0 0 {coord(width)} {coord(height)}",
        width=width,
        height=height,
        font_family=FONT_FAMILY,
        font_size=FONT_SIZE_PX,
        data_empty="true" if empty else None,
    )


def plot_area(plot: Plot) -> str:
    """The plot area's outline (``class="plot-area"``)."""
    return element(
        "rect",
        x=plot.left,
        y=plot.top,
        width=plot.right - plot.left,
        height=plot.bottom - plot.top,
        fill="none",
        class_="plot-area",
    )


def empty_chart(
    *, chart_id: str, title_text: str, width: float, legend_markup: str, plot: Plot
) -> str:
    """A chart with nothing to draw: its legend, its plot area and a centred "No data"."""
    x, y = (plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2 + 4
    no_data = text(x, y, "No data", anchor="middle", class_="empty", font_size=14)
    return frame(
        chart_id=chart_id,
        title_text=title_text,
        width=width,
        plot=plot,
        body=legend_markup + plot_area(plot) + no_data,
        empty=True,
    )


def value_axis(plot: Plot, ticks: list[float], step: float, scale: Scale) -> str:
    """Horizontal grid lines at ``ticks``, labelled at the left."""
    parts = []
    for value in ticks:
        y = scale(value)
        parts.append(element("line", x1=plot.left, x2=plot.right, y1=y, y2=y, stroke=GRID_COLOUR))
        label = si(value, step)
        parts.append(text(plot.left - 6, y + 4, label, anchor="end", class_="tick-label"))
    return element("g", "".join(parts), class_="y-axis")


def x_axis(
    plot: Plot, ticks: list[tuple[float, str]], width: float, *, labels_from: float = 0.0
) -> str:
    """The bottom axis line and ticks at the given pixels, labelled under it; a label near
    an edge is moved inside the chart (and right of ``labels_from``)."""
    bottom = plot.bottom
    parts = [element("line", x1=plot.left, x2=plot.right, y1=bottom, y2=bottom, stroke=AXIS_COLOUR)]
    for x, label in ticks:
        parts.append(element("line", x1=x, x2=x, y1=bottom, y2=bottom + 4, stroke=AXIS_COLOUR))
        half = text_width(label) / 2
        middle = min(max(x, labels_from + half + 2), width - half - 2)
        parts.append(text(middle, bottom + 16, label, anchor="middle", class_="tick-label"))
    return element("g", "".join(parts), class_="x-axis")
