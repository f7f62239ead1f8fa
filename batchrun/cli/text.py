"""How values are written for people: durations (``15m10s``), per-minute amounts (``12.3k``),
instants (``2026-11-22 05:40:00 UTC``) and counts of things (``1 request``)."""

from __future__ import annotations

from batchrun.export.status_rows import amount_text, when_text

__all__ = ["amount_text", "duration_text", "plural", "when_text"]


def duration_text(seconds: float) -> str:
    """``42s``, ``15m10s``, ``2h05m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def plural(count: int, noun: str) -> str:
    """``1 request``, ``2 requests``, ``1,000 requests``, ``2 batches``."""
    ending = "es" if noun.endswith(("s", "sh", "ch", "x")) else "s"
    return f"{count:,} {noun}" + ("" if count == 1 else ending)
