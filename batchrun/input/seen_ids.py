"""The custom_ids a request file has used so far, with the line that first used each: what
the reader needs to name a duplicate's first line.

Held in a dict up to ``IDS_IN_MEMORY`` ids (every file within Anthropic's 100,000 requests),
then moved to a temporary SQLite database on disk (Python's own ``sqlite3``, deleted when
closed), so a file of 1,000,000 lines is read in bounded memory: about 120 bytes an id in the
dict, a few MiB of page cache for the file.
"""

from __future__ import annotations

import sqlite3

# Ids kept in memory before they move to the temporary database (about 24 MB of dict).
IDS_IN_MEMORY = 200_000


class SeenIds:
    """custom_id → the line that first used it."""

    def __init__(self, *, ids_in_memory: int = IDS_IN_MEMORY) -> None:
        self._memory: dict[str, int] = {}
        self._ids_in_memory = ids_in_memory
        self._spilled: sqlite3.Connection | None = None

    @property
    def in_memory(self) -> int:
        """How many ids the dict holds now (at most ``ids_in_memory``)."""
        return len(self._memory)

    def first_line(self, custom_id: str, line_no: int) -> int:
        """The line that first used ``custom_id``: ``line_no`` itself if none did before
        (then it is remembered)."""
        first = self._memory.setdefault(custom_id, line_no)
        if first != line_no:
            return first
        if self._spilled is not None:
            row = self._spilled.execute(
                "SELECT line FROM seen WHERE id = ?", (custom_id,)
            ).fetchone()
            if row is not None:
                del self._memory[custom_id]
                return int(row[0])
        if len(self._memory) >= self._ids_in_memory:
            self._spill()
        return line_no

    def _spill(self) -> None:
        if self._spilled is None:
            # "": a private temporary database on disk, removed when the connection closes.
            self._spilled = sqlite3.connect("", isolation_level=None)
            self._spilled.execute("PRAGMA journal_mode=OFF")
            self._spilled.execute("PRAGMA synchronous=OFF")
            self._spilled.execute(
                "CREATE TABLE seen (id TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID"
            )
        self._spilled.executemany("INSERT INTO seen VALUES (?, ?)", self._memory.items())
        self._memory = {}

    def close(self) -> None:
        """Remove the temporary database, if there is one."""
        if self._spilled is not None:
            self._spilled.close()
            self._spilled = None
