"""Tables in: each row rendered by a template into a request, validated as a request line
is, and stored as one batch with its rows.

`table_items` turns a table (`batchrun.input.tables`) and a template
(`batchrun.input.templates`) into the items the request-file ingest reads
(`batchrun.input.ingest.submit_requests` takes them in place of reading a file): a rendered
row is checked by the very function that checks a JSONL line (so a template that makes bad
requests is told so row by row, as a bad file is line by line); a row that cannot be
rendered is an invalid line listing why; custom_ids must be unique across rows. Each row's
JSON is handed to the ingest beside its request and stored in the batch's transaction.
Problems name ``FILE:row N``; nothing is stored while any row has one (unless
``--skip-invalid``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import orjson

from batchrun.input.reader import FileProblem, ReadItem, check_duplicate, open_request_file
from batchrun.input.seen_ids import SeenIds
from batchrun.input.tables import (
    RowProblem,
    TableItem,
    TableProblem,
    buffered,
    read_table,
    row_json,
    table_format_of,
)
from batchrun.input.templates import Rendered, Template, render
from batchrun.input.validation import MAX_LINE_BYTES, InvalidLine, validate_line
from batchrun.input.wording import size_text
from batchrun.structured.schemas import StructuredMode


def row_locator(source: str) -> Callable[[int], str]:
    """How a problem's place is written: ``FILE:row N``."""
    return lambda row_no: f"{source}:row {row_no}"


@dataclass
class TableItems:
    """The items of one table for the ingest, and each row's JSON until the ingest takes
    it (at most the rows read ahead of it: one, as the items are made one at a time)."""

    rows: dict[int, str] = field(default_factory=dict)

    def input_row(self, row_no: int) -> str | None:
        """The JSON of row ``row_no``, handed over once."""
        return self.rows.pop(row_no, None)


@dataclass(frozen=True)
class OpenedTable:
    """A table open for reading: its name in messages, its items, where problems are."""

    source: str
    items: Iterator[ReadItem]
    locate: Callable[[int], str]


@contextlib.contextmanager
def open_table(
    table: object,
    *,
    template: Template,
    table_format: str | None,
    mode: StructuredMode | None,
    default_model: str | None,
    max_requests: int,
    max_file_bytes: int,
    keep: TableItems | None,
) -> Iterator[OpenedTable]:
    """Open ``table`` and render its rows with ``template``: what ``submit`` stores and
    ``estimate`` plans, read the same way (`table_items`). ``table`` is a path (``-``:
    standard input) or a table in memory (`batchrun.input.frames.data_rows`: a DataFrame, a
    pyarrow Table, an iterable of dicts). Image paths start at the table's folder (the
    working directory for standard input and tables in memory)."""
    from batchrun.input.frames import data_rows

    with contextlib.ExitStack() as stack:
        path: str | None = None
        stream: BinaryIO | None = None
        rows: Iterator[TableItem] | None = None
        if isinstance(table, str | os.PathLike):
            named = os.fspath(table)
            path, source = named, "<stdin>" if named == "-" else named
            base_dir = os.getcwd() if named == "-" else os.path.dirname(os.path.abspath(named))
            stream = buffered(stack.enter_context(open_request_file(named)))
            form = table_format_of(named, stream, table_format)
        else:
            form, base_dir = "rows", os.getcwd()
            source, rows = data_rows(table)
        yield OpenedTable(
            source=source,
            items=table_items(
                stream,
                template=template,
                source=source,
                table_format=form,
                path=path,
                mode=mode,
                default_model=default_model,
                max_requests=max_requests,
                max_file_bytes=max_file_bytes,
                max_row_bytes=MAX_LINE_BYTES,
                keep=keep,
                base_dir=base_dir,
                rows=rows,
            ),
            locate=row_locator(source),
        )


def table_items(
    stream: BinaryIO | None,
    *,
    template: Template,
    source: str,
    table_format: str,
    path: str | None,
    mode: StructuredMode | None,
    default_model: str | None,
    max_requests: int,
    max_file_bytes: int,
    max_row_bytes: int,
    keep: TableItems | None,
    base_dir: str = ".",
    rows: Iterable[TableItem] | None = None,
) -> Iterator[ReadItem]:
    """The table's rows as ingest items: ``(row_no, ValidRequest | InvalidLine)``, and a
    `FileProblem` last when the table as a whole cannot be used (empty, unreadable, over a
    cap). ``mode`` is how the endpoint is asked for structured answers; ``keep`` receives
    each row's JSON for ``input_row`` (None: rows are not kept, as for an estimate);
    ``base_dir`` is where image paths start. Rendered custom_ids are checked for duplicates as a
    JSONL file's are (in memory, then in a temporary file: a table of any size). ``rows``:
    the rows of a table in memory (`batchrun.input.frames`), read instead of ``stream``."""
    seen = SeenIds()
    try:
        yield from _rendered_items(
            stream,
            template=template,
            source=source,
            table_format=table_format,
            path=path,
            mode=mode,
            default_model=default_model,
            max_requests=max_requests,
            max_file_bytes=max_file_bytes,
            max_row_bytes=max_row_bytes,
            keep=keep,
            base_dir=base_dir,
            seen=seen,
            rows=rows,
        )
    finally:
        seen.close()


def _rendered_items(
    stream: BinaryIO | None,
    *,
    template: Template,
    source: str,
    table_format: str,
    path: str | None,
    mode: StructuredMode | None,
    default_model: str | None,
    max_requests: int,
    max_file_bytes: int,
    max_row_bytes: int,
    keep: TableItems | None,
    base_dir: str,
    seen: SeenIds,
    rows: Iterable[TableItem] | None,
) -> Iterator[ReadItem]:
    total_bytes = 0
    count = 0
    if rows is None:
        rows = read_table(
            stream,
            source=source,
            table_format=table_format,
            path=path,
            max_row_bytes=max_row_bytes,
        )
    for row_no, item in rows:
        if isinstance(item, TableProblem):
            yield row_no, FileProblem(item.message)
            return
        count += 1
        if count > max_requests:
            yield (
                row_no,
                FileProblem(
                    f"{source} has more than {max_requests:,} rows (stopped at row {row_no:,}); "
                    "split the table or pass --max-requests N"
                ),
            )
            return
        if isinstance(item, RowProblem):
            yield row_no, InvalidLine(row_no, None, item.problems)
            continue
        if keep is not None:
            keep.rows[row_no] = row_json(item)
        rendered = render(template, item, row_no, mode=mode, base_dir=base_dir)
        if not isinstance(rendered, Rendered):
            yield row_no, InvalidLine(row_no, None, rendered)
            continue
        raw = orjson.dumps({"custom_id": rendered.custom_id, "params": rendered.params})
        total_bytes += len(raw) + 1
        if total_bytes > max_file_bytes:
            yield (
                row_no,
                FileProblem(
                    f"the requests rendered from {source} are larger than "
                    f"{size_text(max_file_bytes)} (stopped at row {row_no:,}); split the table or "
                    "pass --max-file-bytes N"
                ),
            )
            return
        checked = validate_line(raw, row_no, default_model=default_model)
        yield row_no, check_duplicate(checked, row_no, seen, unit="row")
