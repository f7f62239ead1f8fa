"""Tables in: CSV, TSV, Parquet or JSON lines of objects, read one row at a time.

`read_table` yields ``(row_no, item)`` lazily, where ``item`` is the row as a dict (column →
value, in column order), a `RowProblem`, or a `TableProblem` (the table as a whole cannot be
read; always the last item). Row numbers count data rows from 1: in a CSV, row 1 is the line
after the header (a quoted field may span lines); in JSON lines, row N is the N-th object.

Memory stays bounded whatever the table's size: CSV and TSV are decoded and split by the
:mod:`csv` module as they are read, a row over ``max_row_bytes`` is not kept (the table is
refused, naming the row); Parquet is read one record batch at a time, its column chunks
through a buffer (pyarrow still holds some of a row group's data: memory grows a little with
the row-group size, not with the file); JSON lines one line at a time. CSV cells are
strings; Parquet and JSON cells keep their types (None for a null).

Decisions: the format comes from ``table_format``, else the file's extension, else (standard
input, other extensions) from its first bytes (``{`` is JSON lines, a tab before any comma
in the first line TSV, anything else CSV; Parquet needs a path). A UTF-8 BOM is skipped, a
UTF-16 one refused. Text that is not UTF-8 makes its row invalid, naming the column. The
header must name every column once. A CSV row with more or fewer cells than the header is
invalid. An empty table (no rows) is refused.
"""

from __future__ import annotations

import base64
import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, BinaryIO, Final, TypeAlias

import orjson

from batchrun.errors import InputFileError
from batchrun.input.wording import show, size_text

TABLE_FORMATS: Final = ("csv", "tsv", "parquet", "jsonl")
_EXTENSIONS: Final = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
# Rows per Parquet record batch: a few MB of typical rows; and the buffer column chunks are
# read through.
PARQUET_BATCH_ROWS = 1024
PARQUET_BUFFER_BYTES = 1024 * 1024
# The most column names a message lists.
_SHOWN_COLUMNS = 20
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_PARQUET_MAGIC = b"PAR1"
_SNIFF_BYTES = 4096
# The piece size for reading past the limit of an over-long row.
_DRAIN_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A row that cannot be used; ``problems`` are full sentences (without ``file:row N:``)."""

    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TableProblem:
    """The table as a whole cannot be used; ``message`` names the file and the fix."""

    message: str


TableItem: TypeAlias = tuple[int, dict[str, Any] | RowProblem | TableProblem]


def table_format_of(path: str, stream: BinaryIO | None, table_format: str | None) -> str:
    """The format to read ``path`` as: ``table_format`` when given, else by extension, else
    sniffed from the first bytes of ``stream`` (which must support ``peek``)."""
    if table_format is not None:
        if table_format not in TABLE_FORMATS:
            raise InputFileError(
                f"unknown table format {table_format!r}; use one of {', '.join(TABLE_FORMATS)}"
            )
        return table_format
    by_extension = _EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if by_extension is not None:
        return by_extension
    if stream is None or not hasattr(stream, "peek"):
        return "csv"
    head = stream.peek(_SNIFF_BYTES)[:_SNIFF_BYTES].removeprefix(_UTF8_BOM)
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if head.lstrip().startswith(b"{"):
        return "jsonl"
    first_line = head.split(b"\n", 1)[0]
    tab, comma = first_line.find(b"\t"), first_line.find(b",")
    return "tsv" if tab >= 0 and (comma < 0 or tab < comma) else "csv"


def read_table(
    stream: BinaryIO | None,
    *,
    source: str,
    table_format: str,
    path: str | None = None,
    max_row_bytes: int,
) -> Iterator[TableItem]:
    """Yield ``(row_no, row | RowProblem | TableProblem)`` for each row, lazily (see the
    module docstring). CSV, TSV and JSON lines are read from ``stream``; Parquet from
    ``path``."""
    if table_format == "parquet":
        if path is None or path == "-":
            yield (
                0,
                TableProblem(
                    f"{source}: Parquet cannot be read from standard input; pass the file's path"
                ),
            )
            return
        yield from _parquet_rows(path, source)
        return
    assert stream is not None
    head = stream.peek(4)[:4] if hasattr(stream, "peek") else b""
    if head.startswith(_UTF16_BOMS):
        yield 0, TableProblem(f"{source} is UTF-16 encoded; save it as UTF-8")
        return
    if head.startswith(_PARQUET_MAGIC):
        yield (
            0,
            TableProblem(
                f"{source} is a Parquet file; name it .parquet or pass --table-format parquet"
            ),
        )
        return
    if table_format == "jsonl":
        yield from _json_rows(stream, source, max_row_bytes)
    else:
        yield from _csv_rows(stream, source, "\t" if table_format == "tsv" else ",", max_row_bytes)


# -- CSV and TSV ------------------------------------------------------------------------------


class _RowTooLong(Exception):
    """A row of the table is over the limit (raised out of the csv module)."""

    def __init__(self, size_bytes: int) -> None:
        super().__init__(size_bytes)
        self.size_bytes = size_bytes


class _Lines:
    """The table's lines as text for the csv module, and the bytes of the record being read.

    A record (a row, whose quoted cells may span lines) over ``max_row_bytes`` raises
    `_RowTooLong`, after the rest of its current line is read in pieces without keeping it:
    so no row, on one line or many, is ever held whole past the limit. Bytes that are not
    UTF-8 become lone surrogates, so the row they are in is found and named.
    """

    def __init__(self, stream: BinaryIO, source: str, max_row_bytes: int) -> None:
        self._stream = stream
        self._source = source
        self._max_row_bytes = max_row_bytes
        self._record_bytes = 0
        self._first = True

    def record_done(self) -> None:
        """The csv module gave a record: the next one starts at the next line."""
        self._record_bytes = 0

    def __iter__(self) -> Iterator[str]:
        while True:
            room = self._max_row_bytes - self._record_bytes + 2  # + a CRLF
            raw = _read_line(self._stream, room, self._source)
            if not raw:
                return
            if self._first:
                raw = raw.removeprefix(_UTF8_BOM)
                self._first = False
            self._record_bytes += len(raw)
            if len(raw) >= room and not raw.endswith(b"\n"):
                size = self._record_bytes
                while chunk := _read_line(self._stream, _DRAIN_CHUNK_BYTES, self._source):
                    size += len(chunk)
                    if chunk.endswith(b"\n"):
                        break
                raise _RowTooLong(size)
            yield raw.decode("utf-8", errors="surrogateescape")


def _read_line(stream: BinaryIO, limit: int, source: str) -> bytes:
    try:
        return stream.readline(limit)
    except OSError as exc:
        raise InputFileError(f"{source}: cannot be read ({exc})") from exc


def _csv_rows(
    stream: BinaryIO, source: str, delimiter: str, max_row_bytes: int
) -> Iterator[TableItem]:
    # The module's own cap on one cell (131,072 characters by default) would refuse cells a
    # request may hold; `_Lines` caps the whole row in bytes instead.
    csv.field_size_limit(max(max_row_bytes, csv.field_size_limit()))
    lines = _Lines(stream, source, max_row_bytes)
    reader = csv.reader(lines, delimiter=delimiter)
    row_no = 0
    header: list[str] | None = None
    try:
        for cells in reader:
            lines.record_done()
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            if header is None:
                problem = _header_problem(cells, source)
                if problem is not None:
                    yield 0, problem
                    return
                header = cells
                continue
            row_no += 1
            yield row_no, _csv_row(header, cells)
    except _RowTooLong as too_long:
        where = "the header" if header is None else f"row {row_no + 1:,}"
        yield (
            row_no + 1,
            TableProblem(
                f"{source}: {where} is {size_text(too_long.size_bytes)} or more, over the "
                f"limit of {size_text(max_row_bytes)} for one row; make it smaller (or is a "
                "quote left open above it?)"
            ),
        )
        return
    except csv.Error as exc:
        kind = "TSV" if delimiter == "\t" else "CSV"
        yield (
            row_no + 1,
            TableProblem(
                f"{source}: row {row_no + 1:,} cannot be read as {kind} ({exc}); check its quotes"
            ),
        )
        return
    if header is None:
        yield 0, TableProblem(f"{source} is empty; a table needs a header row and rows under it")
    elif row_no == 0:
        yield 0, TableProblem(f"{source} has a header row but no rows; add rows under it")


def _header_problem(cells: list[str], source: str) -> TableProblem | None:
    for index, name in enumerate(cells, start=1):
        if _not_utf8(name):
            return TableProblem(
                f"{source}: the header's column {index} is not valid UTF-8; save the file as UTF-8"
            )
        if not name.strip():
            return TableProblem(
                f"{source}: the header's column {index} has no name; name every column"
            )
    seen: set[str] = set()
    for name in cells:
        if name in seen:
            return TableProblem(
                f"{source}: the header names column {show(name)} twice; give each column its "
                "own name"
            )
        seen.add(name)
    return None


def _csv_row(header: list[str], cells: list[str]) -> dict[str, Any] | RowProblem:
    problems: list[str] = []
    if len(cells) != len(header):
        problems.append(
            f"has {len(cells)} cells but the header names {len(header)} columns; quote cells "
            "that hold the delimiter"
        )
    for name, cell in zip(header, cells, strict=False):
        if _not_utf8(cell):
            problems.append(f"column {show(name)} is not valid UTF-8; save the file as UTF-8")
    if problems:
        return RowProblem(tuple(problems))
    return dict(zip(header, cells, strict=True))


def _not_utf8(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# -- JSON lines -------------------------------------------------------------------------------


def _json_rows(stream: BinaryIO, source: str, max_row_bytes: int) -> Iterator[TableItem]:
    row_no = 0
    limit = max_row_bytes + 2
    first = True
    while raw := _read_line(stream, limit, source):
        if first:
            raw = raw.removeprefix(_UTF8_BOM)
            first = False
        if len(raw) >= limit and not raw.endswith(b"\n"):
            size = len(raw)
            while chunk := _read_line(stream, _DRAIN_CHUNK_BYTES, source):
                size += len(chunk)
                if chunk.endswith(b"\n"):
                    break
            yield (
                row_no + 1,
                TableProblem(
                    f"{source}: row {row_no + 1:,} is {size_text(size)}, over the limit of "
                    f"{size_text(max_row_bytes)} for one row; make it smaller"
                ),
            )
            return
        if not raw.strip():
            continue
        row_no += 1
        yield row_no, _json_row(raw)
    if row_no == 0:
        yield 0, TableProblem(f"{source} has no rows; write one JSON object per line")


def _json_row(raw: bytes) -> dict[str, Any] | RowProblem:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            return RowProblem(
                (f"is not valid UTF-8 at byte {bad.start + 1}; save the file as UTF-8",)
            )
        return RowProblem((f"is not valid JSON: {exc.msg} at column {exc.colno}",))
    if not isinstance(value, dict):
        return RowProblem(
            (f"must be a JSON object of column names and values, not {type(value).__name__}",)
        )
    return value


# -- Parquet ----------------------------------------------------------------------------------


def _parquet_rows(path: str, source: str) -> Iterator[TableItem]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputFileError(
            "reading Parquet needs pyarrow: pip install pyarrow (or 'batchrun-llm[parquet]')"
        ) from None
    import pyarrow as pa

    try:
        # Column chunks read through a buffer, not whole: a file written as one big row
        # group (pyarrow's default holds up to a million rows) is not loaded at once.
        parquet = pq.ParquetFile(path, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file; check the path") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputFileError(f"{source}: cannot be read as Parquet ({exc})") from None
    row_no = 0
    with parquet:
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    row_no += 1
                    yield row_no, row
        except (OSError, pa.ArrowException) as exc:
            yield (
                row_no + 1,
                TableProblem(f"{source}: row {row_no + 1:,} cannot be read as Parquet ({exc})"),
            )
            return
    if row_no == 0:
        yield 0, TableProblem(f"{source} has no rows")


# -- rows as JSON -----------------------------------------------------------------------------


def row_json(row: dict[str, Any]) -> str:
    """A row as the JSON object stored beside its request: Parquet's dates and times as ISO
    text, decimals as text, bytes as base64."""
    return orjson.dumps(row, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def columns_text(row: dict[str, Any]) -> str:
    """The row's column names as a message lists them."""
    names = [show(str(name)) for name in list(row)[:_SHOWN_COLUMNS]]
    if len(row) > _SHOWN_COLUMNS:
        names.append(f"and {len(row) - _SHOWN_COLUMNS} more")
    return ", ".join(names) if names else "(none)"


def buffered(stream: BinaryIO) -> BinaryIO:
    """``stream`` with ``peek``, for sniffing its format."""
    if hasattr(stream, "peek"):
        return stream
    return io.BufferedReader(stream)  # type: ignore[type-var]
