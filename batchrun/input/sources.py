"""Where requests come from: a file, standard input, an open byte stream, or Python objects.

:func:`open_requests` turns any of them into the byte stream of JSON lines the reader
validates, and the name problems are reported under (``file.jsonl:17: ...``). Objects are
encoded one line at a time as the reader asks for them, so an iterator of a million dicts is
never held in memory as a whole.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any, BinaryIO

import orjson

from batchrun.errors import InputFileError
from batchrun.input.reader import open_request_file

# What `submit` and `estimate` accept: a path ("-" is standard input), an open binary
# stream, or request objects ({"custom_id": ..., "params": {...}}).
Requests = str | os.PathLike[str] | IO[bytes] | Iterable[Mapping[str, Any]]
# The name problems with objects are reported under: "<requests>:3: ...".
OBJECTS_SOURCE = "<requests>"


@contextmanager
def open_requests(requests: Requests) -> Iterator[tuple[BinaryIO, str]]:
    """The byte stream of ``requests`` and the name its problems are reported under."""
    if isinstance(requests, str | os.PathLike):
        path = os.fspath(requests)
        with open_request_file(path) as stream:
            yield stream, "<stdin>" if path == "-" else path
        return
    if isinstance(requests, io.IOBase) or hasattr(requests, "readline"):
        yield requests, getattr(requests, "name", None) or "<stream>"  # type: ignore[misc]
        return
    if isinstance(requests, Mapping | bytes | bytearray):
        raise InputFileError(
            "requests must be a path, a binary stream or an iterable of request objects "
            '({"custom_id": ..., "params": {...}}), not a single ' + type(requests).__name__
        )
    yield io.BufferedReader(_ObjectLines(iter(requests))), OBJECTS_SOURCE


class _ObjectLines(io.RawIOBase):
    """Request objects read as JSON lines, encoded one at a time as they are read."""

    def __init__(self, objects: Iterator[Mapping[str, Any]]) -> None:
        self._objects = objects
        self._pending = b""
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        while not self._pending:
            item = next(self._objects, _END)
            if item is _END:
                return 0
            self._count += 1
            self._pending = _encode(item, self._count) + b"\n"
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


_END = object()


def _encode(item: object, number: int) -> bytes:
    """One object as a JSON line."""
    try:
        return orjson.dumps(item)
    except TypeError as exc:
        raise InputFileError(
            f"{OBJECTS_SOURCE}:{number}: cannot be written as JSON ({exc}); pass dicts, lists, "
            "strings, numbers, booleans and None only"
        ) from None
