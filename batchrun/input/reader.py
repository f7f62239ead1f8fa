"""Stream a request file line by line and yield each line's validated item.

`read_requests` yields ``(line_no, item)`` pairs lazily, where ``item`` is a
`~batchrun.validation.ValidRequest`, an `~batchrun.validation.InvalidLine`, or a `FileProblem`.
It holds one line at a time, plus the map from each custom_id to the line that first used it
(needed to report duplicates; in memory up to a point, then on disk: see
`batchrun.input.seen_ids`). Line numbers count physical lines, 1-based.

File-level rules and decisions:

- A UTF-8 BOM at the start of the file is skipped. A UTF-16 BOM is a `FileProblem`: every line
  of such a file would be garbage.
- Blank and whitespace-only lines are skipped; CRLF line endings are accepted.
- A line over ``max_line_bytes`` is not kept in memory: the rest of it is read and discarded
  in chunks, and it is reported as an `InvalidLine` naming its size.
- Invalid UTF-8 makes only that line invalid (checked in `batchrun.input.validation`).
- A duplicate custom_id makes the later line invalid, naming both lines. That `InvalidLine`
  carries ``custom_id=None``: the id belongs to the first line, so no result may be recorded
  under it for the duplicate.
- Going over ``max_requests`` (non-blank lines) or ``max_file_bytes`` stops reading with a
  `FileProblem`, as does a file with no requests. A `FileProblem` is a distinct type, not an
  `InvalidLine`, because it is about the file rather than a request: the caller must reject the
  whole file (for example roll back what it stored from earlier items) instead of recording an
  errored result. It is always the last item.
- Reading errors raise `InputFileError`; no other exception escapes for any file content.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeAlias

from batchrun.errors import ConfigError, InputFileError
from batchrun.input.seen_ids import IDS_IN_MEMORY, SeenIds
from batchrun.input.validation import (
    MAX_LINE_BYTES,
    MAX_MODEL_CHARS,
    MIB,
    InvalidLine,
    ValidRequest,
    oversized_line,
    validate_line,
)

# Anthropic's Message Batches limits: 100,000 requests or 256 MB per batch.
MAX_REQUESTS = 100_000
MAX_FILE_BYTES = 256 * MIB
# How many problems the CLI prints before summarising the rest.
MAX_PRINTED_PROBLEMS = 20
# The piece size for reading past the end of an over-long line.
_DRAIN_CHUNK_BYTES = MIB

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True, slots=True)
class FileProblem:
    """A problem with the request file as a whole; reading stops after it.

    ``message`` is a full sentence that names the file and the fix.
    """

    message: str


ReadItem: TypeAlias = tuple[int, ValidRequest | InvalidLine | FileProblem]
"""``(line_no, item)``; a `FileProblem` has the line where reading stopped, or 0."""


def read_requests(
    stream: BinaryIO,
    *,
    source: str,
    default_model: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_requests: int = MAX_REQUESTS,
    max_file_bytes: int = MAX_FILE_BYTES,
    ids_in_memory: int = IDS_IN_MEMORY,
) -> Iterator[ReadItem]:
    """Yield ``(line_no, item)`` for each non-blank line of ``stream``, lazily.

    ``source`` names the file in messages. ``default_model`` fills in a missing
    ``params.model``. A `FileProblem` item, if any, is the last one. ``ids_in_memory``: how
    many custom_ids are remembered in memory before they move to a temporary file.
    """
    if default_model is not None and not default_model.strip():
        raise ConfigError("the default model is empty; name a model or leave it unset")
    if default_model is not None and len(default_model) > MAX_MODEL_CHARS:
        raise ConfigError(
            f"the default model is {len(default_model):,} characters long; a model id has "
            f"at most {MAX_MODEL_CHARS}"
        )
    seen = SeenIds(ids_in_memory=ids_in_memory)
    try:
        yield from _read_lines(
            stream,
            source=source,
            default_model=default_model,
            max_line_bytes=max_line_bytes,
            max_requests=max_requests,
            max_file_bytes=max_file_bytes,
            seen=seen,
        )
    finally:
        seen.close()


def _read_lines(
    stream: BinaryIO,
    *,
    source: str,
    default_model: str | None,
    max_line_bytes: int,
    max_requests: int,
    max_file_bytes: int,
    seen: SeenIds,
) -> Iterator[ReadItem]:
    read_limit = max_line_bytes + 2  # room for a CRLF terminator
    line_no = 0
    file_bytes = 0
    requests = 0
    while True:
        raw = _read(stream, read_limit, source, line_no + 1)
        if not raw:
            break
        line_no += 1
        oversize_bytes: int | None = None
        if len(raw) == read_limit and not raw.endswith(b"\n"):
            line_bytes, oversize_bytes = _drain_line(
                stream, raw, source, line_no, budget_bytes=max_file_bytes - file_bytes
            )
            file_bytes += line_bytes
        else:
            file_bytes += len(raw)
        if file_bytes > max_file_bytes:
            yield line_no, _too_big(source, line_no, max_file_bytes)
            return
        if line_no == 1:
            if raw.startswith(_UTF16_BOMS):
                yield line_no, FileProblem(f"{source} is UTF-16 encoded; save it as UTF-8")
                return
            raw = raw.removeprefix(_UTF8_BOM)
        if oversize_bytes is None:
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            if not raw.strip():
                continue

        requests += 1
        if requests > max_requests:
            yield line_no, _too_many(source, line_no, max_requests)
            return
        if oversize_bytes is not None:
            yield line_no, oversized_line(line_no, oversize_bytes, max_line_bytes=max_line_bytes)
            continue
        item = validate_line(
            raw, line_no, default_model=default_model, max_line_bytes=max_line_bytes
        )
        yield line_no, check_duplicate(item, line_no, seen)

    if requests == 0:
        yield 0, FileProblem(f"{source} contains no requests; write one JSON request per line")


def _read(stream: BinaryIO, limit: int, source: str, line_no: int) -> bytes:
    try:
        return stream.readline(limit)
    except OSError as exc:
        raise InputFileError(f"{source}:{line_no}: cannot be read ({exc})") from exc


def _drain_line(
    stream: BinaryIO, head: bytes, source: str, line_no: int, *, budget_bytes: int
) -> tuple[int, int]:
    """Read the rest of an over-long line, whose first bytes are ``head``, without keeping it.

    Returns the bytes read for the line (terminator included) and the size of its content.
    Stops early once more than ``budget_bytes`` were read: the file is then too big anyway.
    """
    total = len(head)
    tail = head[-2:]
    while total <= budget_bytes:
        chunk = _read(stream, _DRAIN_CHUNK_BYTES, source, line_no)
        if not chunk:
            break
        total += len(chunk)
        tail = (tail + chunk[-2:])[-2:]
        if tail.endswith(b"\n"):
            return total, total - (2 if tail == b"\r\n" else 1)
    return total, total


def check_duplicate(
    item: ValidRequest | InvalidLine,
    line_no: int,
    seen: SeenIds,
    *,
    unit: str = "line",
) -> ValidRequest | InvalidLine:
    """``item``, or an `InvalidLine` when its custom_id was first used by an earlier line
    (``seen`` knows each custom_id's first line and learns this one's); ``unit`` is what a
    message calls a line ("row" for a table)."""
    custom_id = item.custom_id
    if custom_id is None:
        return item
    first = seen.first_line(custom_id, line_no)
    if first == line_no:
        return item
    duplicate = (
        f"custom_id {custom_id!r} is already used on {unit} {first}; "
        "custom_ids must be unique in a batch"
    )
    problems = item.problems if isinstance(item, InvalidLine) else ()
    return InvalidLine(line_no, None, (*problems, duplicate))


def _too_many(source: str, line_no: int, max_requests: int) -> FileProblem:
    whose = ", Anthropic's batch limit" if max_requests == MAX_REQUESTS else ""
    return FileProblem(
        f"{source} has more than {max_requests:,} requests{whose} (stopped at line "
        f"{line_no:,}); split the file or pass --max-requests N"
    )


def _too_big(source: str, line_no: int, max_file_bytes: int) -> FileProblem:
    whose = ", Anthropic's batch size limit" if max_file_bytes == MAX_FILE_BYTES else ""
    return FileProblem(
        f"{source} is larger than {max_file_bytes:,} bytes{whose} (stopped at line "
        f"{line_no:,}); split the file or pass --max-file-bytes N"
    )


@contextlib.contextmanager
def open_request_file(path: str) -> Iterator[BinaryIO]:
    """Open a request file for binary reading; ``-`` means standard input (left open).

    Raises `InputFileError` when the path does not exist, is a directory or cannot be read.
    """
    if path == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise InputFileError(
                "standard input is closed; pipe the requests in, or pass the file's path"
            )
        yield sys.stdin.buffer
        return
    try:
        stream = open(path, "rb")  # noqa: SIM115 - the `with` below closes it
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a directory; pass a .jsonl file") from None
    except PermissionError:
        raise InputFileError(
            f"{path}: permission denied; make the file readable or pass another file"
        ) from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be opened ({exc.strerror}); check the path") from None
    with stream:
        yield stream


def format_problems(
    items: Iterable[InvalidLine | FileProblem],
    *,
    source: str,
    max_problems: int = MAX_PRINTED_PROBLEMS,
    locate: Callable[[int], str] | None = None,
) -> list[str]:
    """Format problems as the CLI prints them, one per line: ``file:line: message``
    (``locate(line_no)`` instead of ``file:line`` when given: the server says
    ``requests[3]``).

    Lists at most ``max_problems``, then "… and N more problems". A `FileProblem`'s message
    already names the file and is printed as-is.
    """
    where = locate or (lambda line_no: f"{source}:{line_no}")
    lines: list[str] = []
    hidden = 0
    for item in items:
        if isinstance(item, FileProblem):
            messages = [item.message]
        else:
            messages = [f"{where(item.line_no)}: {problem}" for problem in item.problems]
        for message in messages:
            if len(lines) < max_problems:
                lines.append(message)
            else:
                hidden += 1
    if hidden:
        lines.append(f"… and {hidden:,} more problem{'s' if hidden != 1 else ''}")
    return lines
