"""How values are written for people: durations (``15m10s``), per-minute amounts (``12.3k``),
instants (``2026-11-22 05:40:00 UTC``) and counts of things (``1 request``)."""

from __future__ import annotations

from batchrun.export.status_rows import amount_text, duration_text, when_text

__all__ = ["amount_text", "duration_text", "plural", "when_text"]


def plural(count: int, noun: str) -> str:
    """``1 request``, ``2 requests``, ``1,000 requests``, ``2 batches``."""
    ending = "es" if noun.endswith(("s", "sh", "ch", "x")) else "s"
    return f"{count:,} {noun}" + ("" if count == 1 else ending)
