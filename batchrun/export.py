"""Results out: one JSON line per request in Anthropic's batch results format.

Lines come in input order. A succeeded line carries the stored response text as is (it is
already compact JSON), so exporting does not parse and re-encode every Message.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from batchrun.errors import BatchrunError
from batchrun.records import ResultRow

_BARE_RESULTS = {"canceled", "expired"}


def anthropic_lines(rows: Iterable[ResultRow]) -> Iterator[str]:
    """The Anthropic results line of every finished request (without newline)."""
    for row in rows:
        head = '{"custom_id":' + json.dumps(row.custom_id) + ',"result":{"type":'
        if row.state == "succeeded" and row.body is not None:
            yield head + '"succeeded","message":' + row.body + "}}"
        elif row.state == "errored" and row.body is not None:
            yield head + '"errored","error":' + row.body + "}}"
        elif row.state in _BARE_RESULTS:
            yield head + '"' + row.state + '"}}'


@contextmanager
def atomic_output(path: str | None, stdout: IO[str]) -> Iterator[IO[str]]:
    """A text stream for the export: stdout, or a temporary file next to ``path`` that is
    renamed over it only when the export is complete (a reader never sees half a file)."""
    if path is None or path == "-":
        yield stdout
        return
    target = Path(path)
    if target.is_dir():
        raise BatchrunError(f"{path}: is a directory; give a file name for the results")
    try:
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or Path(".")
        )
    except OSError as exc:
        raise BatchrunError(f"{path}: cannot write there ({exc.strerror})") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
