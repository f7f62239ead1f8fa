"""The report's SVG charts (``batchrun.ops.views.report.charts``): pure functions, checked by
parsing their output as XML and reading the markup hooks the page and its tests rely on."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.ops.views.report.axes import nice_step, si, time_label, value_ticks, with_unit
from batchrun.ops.views.report.charts import (
    Bar,
    Series,
    Threshold,
    bar_chart,
    histogram,
    time_chart,
)
from batchrun.ops.views.report.svg import bare, steps

SVG = "{http://www.w3.org/2000/svg}"
# 2026-11-22 12:00:00 UTC.
NOON = datetime(2026, 11, 22, 12, tzinfo=UTC).timestamp()
TICK_LABEL = re.compile(r"^\d+(\.\d+)?[kMGTPE]?$")


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def _with(root: ET.Element, attribute: str) -> list[ET.Element]:
    return [node for node in root.iter() if attribute in node.attrib]


def _classed(root: ET.Element, name: str) -> list[ET.Element]:
    return [node for node in root.iter() if name in node.get("class", "").split()]


def _plot_top_bottom(root: ET.Element) -> tuple[float, float]:
    (area,) = _classed(root, "plot-area")
    top = float(area.attrib["y"])
    return top, top + float(area.attrib["height"])


def _tick_labels(root: ET.Element, axis: str) -> list[str]:
    (group,) = _classed(root, axis)
    return [node.text or "" for node in group.iter(f"{SVG}text")]


def _path_ys(path: ET.Element) -> list[float]:
    numbers = re.findall(r"-?\d+(?:\.\d+)?,(-?\d+(?:\.\d+)?)", path.attrib["d"])
    return [float(y) for y in numbers]


def _minutes(values: list[float], start: float = NOON) -> list[tuple[float, float]]:
    return [(start + 60 * i, value) for i, value in enumerate(values)]


def test_a_time_chart_is_an_accessible_svg_with_one_path_per_series() -> None:
    svg = time_chart(
        chart_id="throughput",
        title="Answers per minute",
        y_unit="requests/min",
        series=[
            Series("answers", _minutes([10, 20, 30])),
            Series("errors", _minutes([1, 0, 2]), kind="step"),
            Series("retries", _minutes([0, 1, 1]), kind="area"),
        ],
    )

    root = _parse(svg)
    assert root.attrib["id"] == "throughput"
    assert root.attrib["role"] == "img"
    assert root.attrib["class"] == "chart"
    assert root.attrib["viewBox"] == "0 0 760 260"
    assert root.find(f"{SVG}title") is not None
    assert root.find(f"{SVG}title").text == "Answers per minute"  # type: ignore[union-attr]
    assert "data-empty" not in root.attrib
    series = _with(root, "data-series")
    assert [node.attrib["data-series"] for node in series] == ["answers", "errors", "retries"]
    assert all(node.tag == f"{SVG}path" for node in series)
    legend = [node.text for node in _classed(root, "legend")[0].iter(f"{SVG}text")]
    assert legend == ["answers", "errors", "retries"]
    # Colours by series index, from the palette; an area is filled.
    assert series[0].attrib["stroke"] != series[1].attrib["stroke"]
    assert series[2].attrib["fill"] != "none"


def test_thresholds_are_lines_and_only_the_binding_one_is_marked_and_emphasised() -> None:
    svg = time_chart(
        chart_id="limits",
        title="Requests",
        y_unit="requests/min",
        series=[Series("answers", _minutes([100, 200]))],
        thresholds=[
            Threshold("rpm limit 500/min", 500, binding=True),
            Threshold("server limit 800/min", 800),
        ],
    )

    lines = {node.attrib["data-threshold"]: node for node in _with(_parse(svg), "data-threshold")}
    binding, other = lines["rpm limit 500/min"], lines["server limit 800/min"]
    assert binding.attrib["data-binding"] == "true"
    assert "data-binding" not in other.attrib
    assert "stroke-dasharray" in other.attrib
    assert "stroke-dasharray" not in binding.attrib
    assert float(binding.attrib["stroke-width"]) > float(other.attrib["stroke-width"])
    assert binding.attrib["stroke"] != other.attrib["stroke"]
    assert "rpm limit 500/min (binding)" in svg


def test_the_y_axis_reaches_a_threshold_far_above_every_value() -> None:
    svg = time_chart(
        chart_id="c",
        title="t",
        y_unit="requests/min",
        series=[Series("answers", _minutes([3, 7, 5]))],
        thresholds=[Threshold("limit", 5000)],
    )

    root = _parse(svg)
    top, bottom = _plot_top_bottom(root)
    (line,) = _with(root, "data-threshold")
    assert top < float(line.attrib["y1"]) < bottom
    assert max(_path_ys(_with(root, "data-series")[0])) < bottom


def test_value_ticks_are_nice_numbers_labelled_with_si_suffixes() -> None:
    svg = time_chart(
        chart_id="c",
        title="t",
        y_unit="tokens/min",
        series=[Series("tokens", _minutes([0, 1_234_567, 900_000]))],
    )

    labels = _tick_labels(_parse(svg), "y-axis")
    assert labels[0] == "0"
    assert all(TICK_LABEL.match(label) for label in labels), labels
    assert labels == ["0", "500k", "1M", "1.5M"]


@pytest.mark.parametrize(
    ("span_s", "pattern"),
    [
        (120, r"^\d\d:\d\d:\d\d$"),  # under three minutes: to the second
        (6 * 3600, r"^\d\d:\d\d$"),
        (3 * 86400, r"^(\d\d:\d\d|\d\d-\d\d)$"),  # days: midnight as the date
    ],
)
def test_time_ticks_are_utc_clock_labels_fitting_the_span(span_s: int, pattern: str) -> None:
    svg = time_chart(
        chart_id="c",
        title="t",
        y_unit="x",
        series=[Series("s", [(NOON, 1.0), (NOON + span_s, 2.0)])],
    )

    labels = _tick_labels(_parse(svg), "x-axis")
    assert 2 <= len(labels) <= 9
    assert all(re.match(pattern, label) for label in labels), labels
    if span_s < 86400:
        assert len(set(labels)) == len(labels)
    else:
        assert "11-23" in labels and "11-24" in labels


def test_a_time_label_is_utc_whatever_the_local_zone() -> None:
    assert time_label(NOON + 90, seconds=False) == "12:01"
    assert time_label(NOON + 90, seconds=True) == "12:01:30"
    assert time_label(NOON + 12 * 3600, seconds=False, days=True) == "11-23"
    assert time_label(NOON + 12 * 3600, seconds=False, days=True, year=True) == "2026-11-23"


@pytest.mark.parametrize(
    ("value", "step", "label"),
    [
        (0, None, "0"),
        (950, None, "950"),
        (1234, None, "1.23k"),
        (999_960, None, "1M"),
        (3_400_000, None, "3.4M"),
        (0.0125, None, "0.0125"),
        (1250, 250, "1.25k"),
        (1500, 500, "1.5k"),
        (0.30000000000000004, 0.1, "0.3"),
        (2e21, None, "2e+21"),
    ],
)
def test_numbers_are_labelled_with_si_suffixes(
    value: float, step: float | None, label: str
) -> None:
    assert si(value, step) == label


def test_nice_steps_and_units() -> None:
    assert [nice_step(raw) for raw in (0.7, 1.5, 2.2, 3, 7, 42)] == [1, 2, 2.5, 5, 10, 50]
    assert value_ticks(7) == ([0, 2, 4, 6, 8], 2)
    assert value_ticks(3, integer=True)[1] == 1
    assert with_unit("12", "$") == "$12" and with_unit("40", "%") == "40%"
    assert with_unit("120", "ms") == "120 ms"


@pytest.mark.parametrize(
    ("xs", "ys", "backward", "commands"),
    [
        (["0", "1", "2", "3"], ["5", "5", "7", "7"], False, "H2V7H3"),
        # The same line walked from its end: down first, then across.
        (["3", "2", "1", "0"], ["7", "7", "5", "5"], True, "H2V5H0"),
        (["0", "1", "2"], ["4", "4", "4"], False, "H2"),
        (["0"], ["4"], False, ""),
    ],
)
def test_step_lines_leave_out_moves_that_change_nothing(
    xs: list[str], ys: list[str], backward: bool, commands: str
) -> None:
    assert steps(xs, ys, backward=backward) == commands
    assert bare("M1.0,2.0H30.0V4.5L7.0,8.0Z") == "M1,2H30V4.5L7,8Z"


def test_hostile_names_are_escaped_and_survive_as_attributes() -> None:
    hostile = "<script>alert('x')</script> & \"quoted\"\nnext\x00line\ud800"
    svg = time_chart(
        chart_id='id"><script>',
        title=hostile,
        y_unit=hostile,
        series=[Series(hostile, _minutes([1, 2]))],
        thresholds=[Threshold(hostile, 5, binding=True)],
    )

    root = _parse(svg)
    assert not [node for node in root.iter() if node.tag.endswith("script")]
    # Characters XML cannot hold (NUL, a lone surrogate) become U+FFFD; the file stays UTF-8.
    expected = hostile.replace("\x00", "\ufffd").replace("\ud800", "\ufffd")
    svg.encode()
    assert root.attrib["id"] == 'id"><script>'
    assert _with(root, "data-series")[0].attrib["data-series"] == expected
    assert _with(root, "data-threshold")[0].attrib["data-threshold"] == expected
    bars = bar_chart(chart_id="b", title=hostile, unit="&", bars=[Bar(hostile, 1, note=hostile)])
    (bar,) = _with(_parse(bars), "data-bar")
    assert bar.attrib["data-bar"] == expected
    assert bar.find(f"{SVG}title").text.endswith(expected)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "svg",
    [
        time_chart(chart_id="e", title="t", y_unit="x", series=[]),
        time_chart(chart_id="e", title="t", y_unit="x", series=[Series("a", [])]),
        time_chart(
            chart_id="e",
            title="t",
            y_unit="x",
            series=[Series("a", [(math.nan, 1), (NOON, math.inf)])],
            thresholds=[Threshold("limit", 5)],
        ),
        bar_chart(chart_id="e", title="t", unit="x", bars=[]),
        bar_chart(chart_id="e", title="t", unit="x", bars=[Bar("a", 0), Bar("b", math.nan)]),
        histogram(chart_id="e", title="t", edges=[], counts=[]),
        histogram(chart_id="e", title="t", edges=[0, 1, 2], counts=[0, 0]),
    ],
)
def test_no_data_draws_an_empty_chart_saying_so(svg: str) -> None:
    root = _parse(svg)

    assert root.attrib["data-empty"] == "true"
    assert root.attrib["id"] == "e"
    (message,) = _classed(root, "empty")
    assert message.text == "No data"


def test_stacked_series_are_bands_the_first_at_the_bottom() -> None:
    svg = time_chart(
        chart_id="cost",
        title="Cost per model",
        y_unit="$",
        stacked=True,
        series=[
            Series("haiku", _minutes([1, 1, 1])),
            Series("sonnet", _minutes([2, 2, 2])),
            Series("opus", _minutes([0, 3, 0]), kind="step"),
        ],
    )

    root = _parse(svg)
    top, bottom = _plot_top_bottom(root)
    haiku, sonnet, opus = _with(root, "data-series")
    assert [b.attrib["data-series"] for b in (haiku, sonnet, opus)] == ["haiku", "sonnet", "opus"]
    assert max(_path_ys(haiku)) == bottom
    # Each band starts where the one below ends.
    assert max(_path_ys(sonnet)) == min(_path_ys(haiku))
    assert max(_path_ys(opus)) == min(_path_ys(sonnet))
    assert top < min(_path_ys(opus)) < min(_path_ys(sonnet))
    # The axis reaches the stack's total (6), not the largest series (3).
    assert float(_tick_labels(root, "y-axis")[-1]) >= 6


def test_odd_points_are_drawn_without_error() -> None:
    svg = time_chart(
        chart_id="c",
        title="t",
        y_unit="x",
        series=[
            Series("lone", [(NOON, 5.0)]),
            Series("negative", [(NOON, -5.0), (NOON, 3.0), (math.inf, 1.0), (NOON, math.nan)]),
        ],
    )

    root = _parse(svg)
    lone, negative = _with(root, "data-series")
    assert lone.attrib["data-points"] == "1"
    assert negative.attrib["data-points"] == "2"
    # A negative value is drawn at 0, on the x axis.
    assert max(_path_ys(negative)) == _plot_top_bottom(root)[1]
    days = [(NOON + 86400 * i, float(i)) for i in range(30)]
    labels = _tick_labels(
        _parse(time_chart(chart_id="c", title="t", y_unit="x", series=[Series("s", days)])),
        "x-axis",
    )
    assert labels and all(re.match(r"^\d\d-\d\d$", label) for label in labels), labels


def test_bars_are_proportional_labelled_and_the_chart_grows_with_them() -> None:
    bars = [
        Bar("rate_limit_error", 300, note="429: too many requests"),
        Bar("overloaded_error", 150),
        Bar("api_error", -4),
    ]

    root = _parse(bar_chart(chart_id="errors", title="Errors", unit="requests", bars=bars))

    rects = {node.attrib["data-bar"]: node for node in _with(root, "data-bar")}
    assert list(rects) == ["rate_limit_error", "overloaded_error", "api_error"]
    widths = {label: float(node.attrib["width"]) for label, node in rects.items()}
    assert widths["rate_limit_error"] == pytest.approx(2 * widths["overloaded_error"], abs=0.2)
    assert widths["api_error"] == 0
    note = rects["rate_limit_error"].find(f"{SVG}title").text  # type: ignore[union-attr]
    assert note == "rate_limit_error: 300 requests\n429: too many requests"
    assert "150 requests" in [node.text for node in _classed(root, "value-label")]
    more = bar_chart(
        chart_id="b", title="t", unit="x", bars=[Bar(str(i), i + 1) for i in range(20)]
    )
    assert float(_parse(more).attrib["height"]) > float(root.attrib["height"]) + 300


def test_a_histogram_draws_one_bin_per_count_and_its_marks() -> None:
    edges = [0, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    counts = [0, 3, 10, 40, 90, 50, 12, 3, 1]

    root = _parse(
        histogram(
            chart_id="latency",
            title="Latency",
            edges=edges,
            counts=counts,
            marks=[("p50", 150), ("p90", 480), ("p99", 1900), ("bad", math.nan)],
        )
    )

    bins = _with(root, "data-bin")
    assert [int(node.attrib["data-bin"]) for node in bins] == list(range(len(counts)))
    assert [int(node.attrib["data-count"]) for node in bins] == counts
    assert [node.attrib["data-mark"] for node in _with(root, "data-mark")] == ["p50", "p90", "p99"]
    # Edges spanning more than two decades: a log axis, the bin from 0 at its left end.
    assert _tick_labels(root, "x-axis")[0] == "0 ms"
    assert "1k ms" in _tick_labels(root, "x-axis")


def _bin_widths(edges: list[float]) -> list[float]:
    svg = histogram(chart_id="h", title="t", edges=edges, counts=[1] * (len(edges) - 1))
    return [float(node.attrib["width"]) for node in _with(_parse(svg), "data-bin")]


def test_histogram_bins_are_as_wide_as_their_edges_on_a_linear_or_log_axis() -> None:
    linear = _bin_widths([0, 10, 20, 40])
    assert linear[1] == pytest.approx(linear[0], abs=0.2)
    assert linear[2] == pytest.approx(2 * linear[0], abs=0.2)
    logarithmic = _bin_widths([1, 10, 100, 1000])
    assert logarithmic[1] == pytest.approx(logarithmic[0], abs=0.2)
    assert logarithmic[2] == pytest.approx(logarithmic[0], abs=0.2)


def test_a_histogram_needs_one_edge_more_than_counts() -> None:
    with pytest.raises(ValueError, match="3 edges for 3 counts"):
        histogram(chart_id="h", title="t", edges=[0, 1, 2], counts=[1, 2, 3])


def test_a_day_of_minutes_stays_small() -> None:
    points = _minutes([100 + 50 * math.sin(i / 30) for i in range(1440)])
    series = [Series("answers", points, kind="step"), Series("errors", points, kind="area")]
    svg = time_chart(
        chart_id="c",
        title="t",
        y_unit="requests/min",
        series=series,
        thresholds=[Threshold("limit", 200, binding=True)],
    )

    # Coordinates are rounded to 0.1 px: at most 12 bytes a point, or a step.
    one_line = time_chart(chart_id="c", title="t", y_unit="x", series=[Series("s", points)])
    assert len(one_line) < 1440 * 12 + 5000
    step = _with(_parse(svg), "data-series")[0]
    assert step.attrib["data-series"] == "answers"
    assert len(step.attrib["d"]) < 1440 * 12


GEOMETRY = ("x", "y", "x1", "x2", "y1", "y2", "width", "height", "d", "viewBox")


def _assert_finite_geometry(root: ET.Element) -> None:
    for node in root.iter():
        for key in GEOMETRY:
            value = node.get(key, "").lower()
            assert "nan" not in value and "inf" not in value, (node.tag, key, value)


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
names = st.text(max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    series=st.lists(
        st.builds(
            Series,
            name=names,
            points=st.lists(st.tuples(finite_or_not, finite_or_not), max_size=30),
            kind=st.sampled_from(["line", "area", "step"]),
        ),
        max_size=4,
    ),
    thresholds=st.lists(
        st.builds(Threshold, label=names, value=finite_or_not, binding=st.booleans()), max_size=3
    ),
    stacked=st.booleans(),
    width=st.integers(0, 2000),
    height=st.integers(0, 1000),
)
def test_any_time_chart_is_valid_xml(
    series: list[Series], thresholds: list[Threshold], stacked: bool, width: int, height: int
) -> None:
    svg = time_chart(
        chart_id="c",
        title="t",
        y_unit="x",
        series=series,
        thresholds=thresholds,
        stacked=stacked,
        width=width,
        height=height,
    )

    root = _parse(svg)
    if root.get("data-empty") != "true":
        assert len(_with(root, "data-series")) == len(series)
    _assert_finite_geometry(root)


@settings(max_examples=100, deadline=None)
@given(
    bars=st.lists(
        st.builds(Bar, label=names, value=finite_or_not, note=st.none() | names), max_size=12
    ),
    edges=st.lists(finite_or_not, max_size=12),
    counts=st.lists(st.integers(-5, 10**12), max_size=11),
    marks=st.lists(st.tuples(names, finite_or_not), max_size=4),
)
def test_any_bar_chart_or_histogram_is_valid_xml(
    bars: list[Bar], edges: list[float], counts: list[int], marks: list[tuple[str, float]]
) -> None:
    _assert_finite_geometry(_parse(bar_chart(chart_id="b", title="t", unit="x", bars=bars)))
    edges = edges[: len(counts) + 1]
    counts = counts[: max(len(edges) - 1, 0)]
    svg = histogram(chart_id="h", title="t", edges=edges, counts=counts, marks=marks)
    _assert_finite_geometry(_parse(svg))
