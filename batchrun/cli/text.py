"""How values are written for people and read from flags: durations (``90s``, ``1h30m``),
per-minute amounts (``12.3k``) and instants (``2026-11-22 05:40:00 UTC``)."""

from __future__ import annotations

import re
from datetime import datetime

from batchrun.errors import ConfigError

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)
_SECONDS_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Longer durations are mistakes (and overflow date arithmetic): ten years.
MAX_DURATION_S = 3650 * 86400.0


def parse_duration_s(text: str, *, what: str = "duration") -> float:
    """Seconds in ``text`` (``90s``, ``55m``, ``24h``, ``1h30m``, ``2d``; a bare number means
    seconds). ConfigError with an example if it cannot be read or is not positive."""
    cleaned = text.strip().lower().replace(" ", "")
    seconds: float | None = None
    try:
        seconds = float(cleaned)
    except ValueError:
        position = 0
        total = 0.0
        for match in _PART.finditer(cleaned):
            if match.start() != position:
                break
            total += float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
            position = match.end()
        if position == len(cleaned) and position > 0:
            seconds = total
    if seconds is None or not seconds > 0:
        raise ConfigError(
            f"{what}: {text!r} is not a positive duration; write it like 90s, 55m, 24h or 1h30m"
        )
    if seconds > MAX_DURATION_S:
        raise ConfigError(f"{what}: {text!r} is longer than ten years; give a shorter duration")
    return seconds


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
    """``1 request``, ``2 requests``, ``1,000 requests``."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
