"""One provider batch's results file into the store, so that a succeeded line always wins.

A provider may give several lines for one custom_id (an error, then the success of a retry
it made itself), any distance apart. Succeeded lines are imported as they arrive (each chunk
one transaction). Every other line (errored, expired, canceled, or a Message that could not
be accepted) is kept aside, in memory up to ``SPOOL_MEMORY_BYTES`` and then in a temporary
file, and imported only once the whole file was read: a request that has a succeeded line
anywhere in the file is no longer held by its provider batch by then, so its other lines
change nothing (they count as unmatched). Memory stays bounded by a chunk of lines and the
spool's threshold, whatever the size of the file.

A download that ends early imports only the successes it read; the lines kept aside are
dropped, and the next import reads the whole file again from the start (lines already
imported change nothing).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from datetime import datetime

from batchrun.batch_lane.results import ImportContext, read_result_line
from batchrun.dispatch.clock import LoopClock
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.records import ImportedResult, ImportTally, Requeue

# The lines kept aside stay in memory up to this size, then go to a temporary file (which
# only this process can read, removed when the import ends).
SPOOL_MEMORY_BYTES = 8 * 1024 * 1024
# Lines kept aside are imported this many at a time (one transaction each).
DEFERRED_CHUNK_LINES = 1000


class ResultsImport:
    """The import of one provider batch's results: :meth:`handle` each chunk of lines as it
    arrives, :meth:`finish` once the file has been read to its end, :meth:`close` always."""

    def __init__(
        self, db: WorkerDatabase, row_id: int, context: ImportContext, clock: LoopClock
    ) -> None:
        self._db = db
        self._row_id = row_id
        self._context = context
        self._clock = clock
        self._aside = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
        self.tally = ImportTally()
        self.unreadable = 0

    async def handle(self, lines: list[bytes]) -> None:
        """Import the succeeded lines among ``lines`` now; keep the others aside."""
        successes: list[ImportedResult] = []
        for line in lines:
            read = read_result_line(line, self._context)
            if read is None:
                self.unreadable += 1
            elif isinstance(read, ImportedResult) and read.result.result_type == "succeeded":
                successes.append(read)
            else:
                self._aside.write(line.replace(b"\n", b" ") + b"\n")
        if successes:
            await self._store(successes, [])

    async def finish(self) -> None:
        """Import the lines kept aside, in the order they came (the whole file was read, so
        every success in it is already in)."""
        self._aside.seek(0)
        results: list[ImportedResult] = []
        requeues: list[Requeue] = []
        while line := self._aside.readline():
            read = read_result_line(line.rstrip(b"\n"), self._context)
            if isinstance(read, Requeue):
                requeues.append(read)
            elif read is not None:
                results.append(read)
            if len(results) + len(requeues) >= DEFERRED_CHUNK_LINES:
                await self._store(results, requeues)
                results, requeues = [], []
        if results or requeues:
            await self._store(results, requeues)

    def close(self) -> None:
        """Drop the lines kept aside (and their temporary file)."""
        self._aside.close()

    async def _store(self, results: Sequence[ImportedResult], requeues: Sequence[Requeue]) -> None:
        now: datetime = self._clock.now()
        self.tally = self.tally + await self._db.import_provider_results(
            self._row_id, results, requeues, now=now
        )
