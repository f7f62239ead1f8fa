"""Files written whole or not at all: an export goes to a temporary file next to its target,
which is renamed over the target only once the export is complete."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from batchrun.errors import BatchrunError


@contextmanager
def atomic_output(path: str | os.PathLike[str], *, binary: bool = False) -> Iterator[IO[Any]]:
    """A stream (text, or bytes with ``binary``) to a temporary file next to ``path``, renamed
    over it only when the block completes: a reader never sees half a file, and a failed
    export leaves the old file, or none, behind."""
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
        stream: IO[Any] = (
            os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        )
        with stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
