"""The report's charts as inline SVG: :func:`time_chart` (series against UTC time, with
limit lines), :func:`bar_chart` (labelled horizontal bars) and :func:`histogram` (bins with
percentile marks). Pure: each takes values and returns one ``<svg>`` element as text, valid
XML, with no script and no external reference; the title is the ``<title>`` (the page
writes the visible heading).

Data rules, the same in all three:
- NaN and ±inf are skipped: a point, a bar, a bin with such an edge, a threshold, a mark.
- Negative amounts are drawn as 0 (y values, bar values, counts, thresholds): the charts
  show amounts (requests, tokens, dollars, counts) on an axis that starts at 0.
- Nothing left to draw → the frame, the legend and a centred "No data", with
  ``data-empty="true"`` on the ``<svg>``; never an exception.

Hooks for the page's CSS and for tests: ``class="chart"`` on the ``<svg>``; each series is a
``<path data-series="NAME">``, each threshold a ``<line data-threshold="LABEL">`` (with
``data-binding="true"`` on the binding one), each bar a ``<rect data-bar="LABEL">``, each bin
a ``<rect data-bin="INDEX" data-count="N">``, each mark a ``<line data-mark="LABEL">``; the
plot area is the ``<rect class="plot-area">``. Colours are presentation attributes.

Built from ``axes`` (scales, ticks, number and time labels), ``svg`` (colours, escaping,
elements) and ``layout`` (frame, legend, axes, the empty chart); :func:`bar_chart` and
:func:`histogram` live in ``bars`` and are exported here.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from batchrun.ops.views.report.axes import Scale, si, time_ticks, value_ticks, with_unit
from batchrun.ops.views.report.bars import Bar, bar_chart, histogram
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
    BINDING_COLOUR,
    THRESHOLD_COLOUR,
    THRESHOLD_DASHES,
    bare,
    colour,
    dot_path,
    element,
    halo,
    rounded,
    steps,
    text,
    text_width,
    through,
)
from batchrun.ops.views.report.svg import title as title_element

__all__ = ["Bar", "Series", "Threshold", "bar_chart", "histogram", "time_chart"]

UNIT_ROW_PX = 18
# Room per tick label on the time axis.
X_TICK_SPACING_PX = 80
# A time span narrower than this (one point, or all at one time) is widened to a minute.
MIN_TIME_SPAN_S = 1.0
WIDENED_TIME_SPAN_S = 60.0
_FLOAT_MAX = sys.float_info.max
# Written under the time axis, at its left.
TIME_ZONE = "UTC"


@dataclass(frozen=True)
class Series:
    """A named line over time: (x, y) points, x in Unix seconds (UTC). A ``step`` series
    holds each value until the next point's x."""

    name: str
    points: Sequence[tuple[float, float]]
    kind: Literal["line", "area", "step"] = "line"


@dataclass(frozen=True)
class Threshold:
    """A limit drawn across a time chart at ``value``; the binding one emphasised."""

    label: str
    value: float
    binding: bool = False


def _clean(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The finite points, sorted by x, negative y as 0."""
    kept = [(x, max(y, 0.0)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    return sorted(kept, key=lambda point: point[0])


def _threshold_label(threshold: Threshold) -> str:
    return f"{threshold.label} (binding)" if threshold.binding else threshold.label


def time_chart(
    *,
    chart_id: str,
    title: str,
    y_unit: str,
    series: Sequence[Series],
    thresholds: Sequence[Threshold] = (),
    stacked: bool = False,
    width: int = 760,
    height: int = 260,
) -> str:
    """Series against time, x in Unix seconds labelled in UTC, y from 0 in ``y_unit``, with
    each threshold a horizontal line (the y axis reaches every threshold). ``stacked``
    stacks the series as filled bands, the first at the bottom, whatever their kind; the
    bands' edges are steps when every series is a step series."""
    width = max(width, MIN_WIDTH_PX)
    lines = [_clean(one.points) for one in series]
    limits = [(limit, max(limit.value, 0.0)) for limit in thresholds if math.isfinite(limit.value)]
    items = [
        LegendItem(one.name, colour(i), "fill" if stacked or one.kind == "area" else "line")
        for i, one in enumerate(series)
    ] + [
        LegendItem(_threshold_label(limit), BINDING_COLOUR, "binding")
        if limit.binding
        else LegendItem(limit.label, THRESHOLD_COLOUR, "dashed")
        for limit, _ in limits
    ]
    legend_markup, plot = layout(items, width=width, height=height, rows_px=UNIT_ROW_PX)
    if not any(lines):
        return empty_chart(
            chart_id=chart_id, title_text=title, width=width, legend_markup=legend_markup, plot=plot
        )

    t0 = min(line[0][0] for line in lines if line)
    t1 = max(line[-1][0] for line in lines if line)
    if t1 - t0 < MIN_TIME_SPAN_S:
        middle = t0 / 2 + t1 / 2
        t0, t1 = middle - WIDENED_TIME_SPAN_S / 2, middle + WIDENED_TIME_SPAN_S / 2
    x_scale = Scale(t0, t1, plot.left, plot.right)
    if stacked:
        xs, layers = _stack(lines, [one.kind for one in series])
        top_value = max(layers[-1])
    else:
        top_value = max(y for line in lines for _, y in line)
    top_value = max([top_value] + [value for _, value in limits])
    ticks, step = value_ticks(with_headroom(top_value))
    y_scale = Scale(0.0, ticks[-1], plot.bottom, plot.top)

    max_ticks = int((plot.right - plot.left) // X_TICK_SPACING_PX)
    x_ticks = [(x_scale(t), label) for t, label in time_ticks(t0, t1, max_ticks=max_ticks)]
    parts = [
        legend_markup,
        plot_area(plot),
        value_axis(plot, ticks, step, y_scale),
        x_axis(plot, x_ticks, width, labels_from=PAD_PX + text_width(TIME_ZONE) + 4),
        text(PAD_PX, plot.top - 8, y_unit, class_="unit-label"),
        text(PAD_PX, plot.bottom + 16, TIME_ZONE, class_="unit-label"),
    ]
    if stacked:
        parts.append(_stacked_bands(series, lines, xs, layers, x_scale, y_scale))
    else:
        parts += [
            _series_path(i, one, line, x_scale, y_scale)
            for i, (one, line) in enumerate(zip(series, lines, strict=True))
        ]
    parts.append(_thresholds(limits, plot, y_scale, y_unit))
    return frame(
        chart_id=chart_id,
        title_text=title,
        width=width,
        plot=plot,
        body="".join(parts),
        empty=False,
    )


def _series_path(
    index: int, series: Series, points: list[tuple[float, float]], x_scale: Scale, y_scale: Scale
) -> str:
    """One series' ``<path>`` (an area's outline after it)."""
    hue = colour(index)
    hooks: dict[str, str | float | None] = {
        "data_series": series.name,
        "data_points": len(points),
        "class_": f"series {series.kind}",
    }
    name = title_element(series.name)
    if len(points) <= 1:
        d = dot_path(x_scale(points[0][0]), y_scale(points[0][1])) if points else ""
        return element("path", name, d=d, fill=hue, **hooks)
    xs = rounded(x_scale.many([x for x, _ in points]))
    ys = rounded(y_scale.many([y for _, y in points]))
    if series.kind == "step":
        line = bare(f"M{xs[0]},{ys[0]}" + steps(xs, ys))
    else:
        line = bare("M" + through(xs, ys))
    stroke: dict[str, str | float | None] = {
        "stroke": hue,
        "stroke_width": 2,
        "stroke_linejoin": "round",
    }
    if series.kind != "area":
        return element("path", name, d=line, fill="none", **stroke, **hooks)
    baseline = rounded([y_scale(0.0)])[0]
    outline = bare(f"M{xs[0]},{baseline}L{through(xs, ys)}L{xs[-1]},{baseline}Z")
    fill = element(
        "path",
        name,
        d=outline,
        fill=hue,
        fill_opacity=0.25,
        stroke="none",
        **hooks,
    )
    return fill + element("path", d=line, fill="none", class_="series-edge", **stroke)


def _stack(
    lines: list[list[tuple[float, float]]], kinds: list[str]
) -> tuple[list[float], list[list[float]]]:
    """The times of all series, and the stack's boundaries at them: the baseline (zeros)
    and each series' top, the first series lowest. A series is 0 outside its own span;
    within it, a step series holds its last value, the others are interpolated."""
    xs = sorted({x for line in lines for x, _ in line})
    boundary = [0.0] * len(xs)
    layers = [boundary]
    for line, kind in zip(lines, kinds, strict=True):
        values = _evaluate(line, xs, step=kind == "step")
        boundary = [
            min(low + value, _FLOAT_MAX) for low, value in zip(boundary, values, strict=True)
        ]
        layers.append(boundary)
    return xs, layers


def _evaluate(line: list[tuple[float, float]], xs: list[float], *, step: bool) -> list[float]:
    """``line``'s values at each of ``xs`` (sorted)."""
    if not line:
        return [0.0] * len(xs)
    by_x = dict(line)  # the last of several points at one time wins
    own_x, own_y = list(by_x), list(by_x.values())
    if own_x == xs:
        return own_y
    values = []
    for x in xs:
        if x < own_x[0] or x > own_x[-1]:
            values.append(0.0)
            continue
        i = bisect_right(own_x, x) - 1
        if own_x[i] == x or step:
            values.append(own_y[i])
            continue
        fraction = (x / 2 - own_x[i] / 2) / (own_x[i + 1] / 2 - own_x[i] / 2)
        values.append(own_y[i] + (own_y[i + 1] - own_y[i]) * fraction)
    return values


def _stacked_bands(
    series: Sequence[Series],
    lines: list[list[tuple[float, float]]],
    xs: list[float],
    layers: list[list[float]],
    x_scale: Scale,
    y_scale: Scale,
) -> str:
    """One filled band per series between its boundary and the one below; steps when
    every series is a step series, straight edges otherwise."""
    if len(xs) == 1:  # one time: a narrow column rather than nothing
        pixels = [x_scale(xs[0]) - 3, x_scale(xs[0]) + 3]
        layers = [layer * 2 for layer in layers]
    else:
        pixels = x_scale.many(xs)
    x_text = rounded(pixels)
    x_back = x_text[::-1]
    y_text = [rounded(y_scale.many(layer)) for layer in layers]
    stepped = all(one.kind == "step" for one in series)
    bands = []
    for i, one in enumerate(series):
        upper, lower = y_text[i + 1], y_text[i][::-1]
        if stepped:
            edges = f"M{x_text[0]},{upper[0]}{steps(x_text, upper)}L{x_back[0]},{lower[0]}"
            edges += steps(x_back, lower, backward=True)
        else:
            edges = f"M{through(x_text, upper)}L{through(x_back, lower)}"
        bands.append(
            element(
                "path",
                title_element(one.name),
                d=bare(edges + "Z"),
                fill=colour(i),
                fill_opacity=0.6,
                stroke=colour(i),
                stroke_width=1,
                data_series=one.name,
                data_points=len(lines[i]),
                class_="series stacked",
            )
        )
    return "".join(bands)


def _thresholds(
    limits: list[tuple[Threshold, float]], plot: Plot, y_scale: Scale, y_unit: str
) -> str:
    """The threshold lines, labelled at their right ends over all the lines; labels of lines
    close together are stacked upwards rather than drawn over each other."""
    lines, labels, label_y = [], [], math.inf
    for limit, value in sorted(limits, key=lambda pair: pair[1]):
        y = y_scale(value)
        label_y = min(y - 4, label_y - 13)
        binding = limit.binding
        lines.append(
            element(
                "line",
                title_element(f"{_threshold_label(limit)}: {with_unit(si(value), y_unit)}"),
                x1=plot.left,
                x2=plot.right,
                y1=y,
                y2=y,
                stroke=BINDING_COLOUR if binding else THRESHOLD_COLOUR,
                stroke_width=2.5 if binding else 1.5,
                stroke_dasharray=None if binding else THRESHOLD_DASHES,
                data_threshold=limit.label,
                data_binding="true" if binding else None,
                class_="threshold binding" if binding else "threshold",
            )
        )
        labels.append(
            text(
                plot.right - 4,
                label_y,
                _threshold_label(limit),
                anchor="end",
                class_="threshold-label",
                font_weight="bold" if binding else None,
                **halo(),
            )
        )
    return "".join(lines + labels)
