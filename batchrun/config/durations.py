"""Durations written the way people write them: ``90s``, ``55m``, ``24h``, ``1h30m``, ``2d``.

Read from flags (``--expires-in``, ``--max-runtime``) and from the config file
(``retention``).
"""

from __future__ import annotations

import re

from batchrun.errors import ConfigError

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)
_SECONDS_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Longer durations are mistakes (and overflow date arithmetic): ten years.
MAX_DURATION_S = 3650 * 86400.0


# What every duration error shows, each unit once.
EXAMPLES = "90s, 55m, 24h, 1h30m or 30d"


def parse_duration_s(text: str, *, what: str = "duration", unit_required: bool = False) -> float:
    """Seconds in ``text`` (``90s``, ``55m``, ``24h``, ``1h30m``, ``2d``; a bare number means
    seconds, unless ``unit_required``: an age such as a retention, where "30" more likely
    means days than seconds). ConfigError with an example if it cannot be read or is not
    positive."""
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
    else:
        if unit_required and seconds > 0:
            raise ConfigError(
                f"{what}: {text!r} has no unit; write {cleaned}d for {cleaned} days "
                f"({cleaned}h, {cleaned}m and {cleaned}s are hours, minutes and seconds)"
            )
    if seconds is None or not seconds > 0:
        raise ConfigError(f"{what}: {text!r} is not a positive duration; write it like {EXAMPLES}")
    if seconds > MAX_DURATION_S:
        raise ConfigError(f"{what}: {text!r} is longer than ten years; give a shorter duration")
    return seconds
