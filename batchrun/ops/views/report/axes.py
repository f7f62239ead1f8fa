"""Scales, ticks and number labels for the report's charts (``charts``); pure arithmetic.

Value axes start at 0 and end on a "nice" tick (1, 2, 2.5 or 5 × 10^k); values are labelled
with SI suffixes (1.2k, 3.4M) and never with milli or micro (an "m" next to a unit of time
or money misleads). Time axes are in UTC: ticks at whole multiples of a step (1 s … 7 days,
then a nice number of days), labelled HH:MM, HH:MM:SS when the span is under
:data:`SECONDS_SHOWN_BELOW_S`, and with the date at midnight when the span is a day or more.

Every function copes with any finite input, including spans near the float limits: mappings
compute with halves so that differences cannot overflow, and clamp into their pixel range.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime

NICE_FACTORS = (1.0, 2.0, 2.5, 5.0, 10.0)
SI_SUFFIXES = ("", "k", "M", "G", "T", "P", "E")
# Written before the number rather than after it, with no space.
PREFIX_UNITS = frozenset({"$", "€", "£"})
# Time steps a tick may fall on, in seconds; longer spans use a nice number of days.
TIME_STEPS_S = (
    *(1, 2, 5, 10, 15, 30),
    *(60, 120, 300, 600, 900, 1800),
    *(3600, 7200, 10800, 21600, 43200),
    *(86400, 172800, 604800),
)
DAY_S = 86400
# Spans shorter than this are labelled to the second.
SECONDS_SHOWN_BELOW_S = 180.0
# Spans longer than this name the year in their date labels.
YEAR_SHOWN_ABOVE_S = 180 * DAY_S
# No axis gets more ticks than this, whatever it is asked for.
MAX_TICKS = 50


def coord(value: float) -> str:
    """A coordinate rounded to 0.1, without a trailing ``.0`` (``12``, ``12.5``)."""
    text = f"{value:.1f}"
    if text.endswith(".0"):
        text = text[:-2]
    return "0" if text == "-0" else text


def nice_step(raw: float) -> float:
    """The smallest 1, 2, 2.5, 5 or 10 × 10^k at least ``raw`` (> 0); ``raw`` itself when
    that cannot be represented (subnormal or huge values)."""
    if not raw > 0 or not math.isfinite(raw):
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    if magnitude == 0 or not math.isfinite(magnitude):
        return raw
    step = next(f for f in NICE_FACTORS if f * magnitude >= raw * (1 - 1e-12)) * magnitude
    return step if math.isfinite(step) and step > 0 else raw


def value_ticks(top: float, *, count: int = 4, integer: bool = False) -> tuple[list[float], float]:
    """Ticks from 0 to the first nice tick at or above ``top``, about ``count`` intervals,
    and their step. ``integer`` keeps the step a whole number (for counts). The last tick
    is the axis's end."""
    if not math.isfinite(top) or top <= 0:
        top = 1.0
    step = nice_step(top / count)
    if integer and step < 1:
        step = 1.0
    elif integer and step == 2.5:
        step = 2.0
    intervals = math.ceil(top / step - 1e-9)
    end = intervals * step
    if not math.isfinite(end) or not 0 < intervals <= MAX_TICKS:
        return [0.0, top], top
    return [i * step for i in range(intervals + 1)], step


def linear_ticks(lo: float, hi: float, *, count: int = 5) -> tuple[list[float], float]:
    """Ticks at whole multiples of a nice step within [lo, hi], and the step."""
    span = hi - lo
    if not math.isfinite(span) or span <= 0:
        return [lo, hi] if hi > lo else [lo], max(abs(hi), abs(lo), 1.0)
    step = nice_step(span / count)
    first = math.ceil(lo / step - 1e-9) * step
    intervals = math.floor((hi - first) / step + 1e-9)
    if not math.isfinite(first) or not 0 <= intervals <= MAX_TICKS:
        return [lo, hi], span
    return [first + i * step for i in range(intervals + 1)], step


def log_ticks(lo: float, hi: float, *, max_ticks: int = 10) -> list[float]:
    """Powers of ten within [lo, hi] (0 < lo < hi), every k-th decade when there are more
    than ``max_ticks``; with 2 and 5 times them as well when the range spans few decades."""
    first, last = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    decades = list(range(first, last + 1))
    every = max(1, math.ceil(len(decades) / max_ticks))
    ticks = [10.0**k for k in decades[::every]]
    if len(decades) <= 3:
        ticks += [f * 10.0**k for k in range(first - 1, last + 1) for f in (2.0, 5.0)]
    return sorted(t for t in ticks if lo <= t <= hi and math.isfinite(t))


class Scale:
    """Maps the domain [lo, hi] onto the pixels [start, end] (end < start for a y axis),
    linearly or, with ``log``, on a log axis (values at or below ``lo`` map to ``start``).
    Values outside the domain are clamped to it; a domain of no width maps to its middle."""

    __slots__ = ("_half_lo", "_per_half", "end", "hi", "lo", "log", "start")

    def __init__(self, lo: float, hi: float, start: float, end: float, *, log: bool = False):
        self.lo, self.hi, self.start, self.end, self.log = lo, hi, start, end, log
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        # Halves, so that neither the span nor a value's distance from lo can overflow.
        half_span = hi / 2 - lo / 2
        self._half_lo = lo / 2
        self._per_half = 1 / half_span if half_span > 0 and 1 / half_span < math.inf else 0.0

    def many(self, values: Iterable[float]) -> list[float]:
        """The pixels of ``values``."""
        if self.log or not self._per_half:
            return [self(value) for value in values]
        start, extent = self.start, self.end - self.start
        half_lo, per_half = self._half_lo, self._per_half
        return [
            start + min(1.0, max(0.0, (value / 2 - half_lo) * per_half)) * extent
            for value in values
        ]

    def __call__(self, value: float) -> float:
        if self.log:
            value = math.log10(max(value, self.lo))
        if not self._per_half:
            return (self.start + self.end) / 2
        fraction = min(1.0, max(0.0, (value / 2 - self._half_lo) * self._per_half))
        return self.start + fraction * (self.end - self.start)


def _decimals(step: float) -> int:
    """How many decimals show a multiple of ``step`` exactly (at most 9)."""
    for decimals in range(10):
        if abs(round(step, decimals) - step) <= abs(step) * 1e-6:
            return decimals
    return 9


def si(value: float, step: float | None = None) -> str:
    """``value`` with an SI suffix from k up (``950``, ``1.2k``, ``3.4M``), to three
    significant digits, or, given the ``step`` of an axis, to as many decimals as tell its
    ticks apart (``1.25k`` on an axis of 250s). Below 1000: plain decimals."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    group = min(len(SI_SUFFIXES) - 1, max(0, math.floor(math.log10(abs(value)) / 3)))
    for _ in range(2):
        scaled = value / 1000.0**group
        if step is None:
            text = f"{scaled:.3g}"
        else:
            text = f"{scaled:.{_decimals(step / 1000.0**group)}f}"
            if "." in text:
                text = text.rstrip("0").rstrip(".")
        # 999.96 rounds to "1e+03" or "1000": one group up.
        if abs(float(text)) >= 1000 and group < len(SI_SUFFIXES) - 1:
            group += 1
            continue
        break
    if "e" in text and group:  # beyond E: the plain number, in exponent notation
        return f"{value:.3g}"
    return ("0" if text in ("-0", "0") else text) + SI_SUFFIXES[group]


def with_unit(text: str, unit: str) -> str:
    """A number's text with its unit: ``$12``, ``40%``, ``120 ms``."""
    if not unit:
        return text
    if unit in PREFIX_UNITS:
        return f"-{unit}{text[1:]}" if text.startswith("-") else unit + text
    return text + unit if unit == "%" else f"{text} {unit}"


def time_ticks(t0: float, t1: float, *, max_ticks: int) -> list[tuple[float, str]]:
    """Ticks on a time axis from ``t0`` to ``t1`` (Unix seconds), at most ``max_ticks``,
    each with its UTC label."""
    span = t1 - t0
    if not math.isfinite(span) or span <= 0:
        return []
    seconds = span < SECONDS_SHOWN_BELOW_S
    max_ticks = max(2, min(max_ticks, MAX_TICKS))
    fitting = (s for s in TIME_STEPS_S if span / s <= max_ticks and (seconds or s >= 60))
    step = next(fitting, None) or DAY_S * nice_step(span / max_ticks / DAY_S)
    first = math.ceil(t0 / step) * step
    intervals = math.floor((t1 - first) / step)
    if not math.isfinite(first) or not 0 <= intervals <= MAX_TICKS:
        return []
    ticks = [first + i * step for i in range(intervals + 1)]
    days = span >= DAY_S or step >= DAY_S
    return [
        (t, time_label(t, seconds=seconds, days=days, year=span > YEAR_SHOWN_ABOVE_S))
        for t in ticks
    ]


def time_label(t: float, *, seconds: bool, days: bool = False, year: bool = False) -> str:
    """``t`` (Unix seconds) as UTC HH:MM or HH:MM:SS; with ``days``, midnight as the date
    (MM-DD, or YYYY-MM-DD with ``year``)."""
    whole = round(t)
    of_day = whole % DAY_S
    if days and of_day == 0:
        try:
            return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%d" if year else "%m-%d")
        except (OverflowError, ValueError, OSError):
            return f"day {whole // DAY_S}"
    hours, rest = divmod(of_day, 3600)
    text = f"{hours:02d}:{rest // 60:02d}"
    return f"{text}:{rest % 60:02d}" if seconds else text
