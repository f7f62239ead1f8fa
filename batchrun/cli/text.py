"""How values are written for people: durations (``15m10s``), per-minute amounts (``12.3k``),
instants (``2026-11-22 05:40:00 UTC``) and counts of things (``1 request``)."""

from __future__ import annotations

from datetime import datetime


def duration_text(seconds: float) -> str:
    """``42s``, ``15m10s``, ``2h05m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def amount_text(value: float) -> str:
    """A per-minute amount, short: ``58``, ``12.3k``, ``1.2M``."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def when_text(value: datetime | None) -> str:
    """An instant in UTC, or ``-``."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def plural(count: int, noun: str) -> str:
    """``1 request``, ``2 requests``, ``1,000 requests``, ``2 batches``."""
    ending = "es" if noun.endswith(("s", "sh", "ch", "x")) else "s"
    return f"{count:,} {noun}" + ("" if count == 1 else ending)
