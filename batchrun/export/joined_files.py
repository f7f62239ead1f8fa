"""The joined records (`batchrun.export.joined`) written as flat JSON lines, CSV or Parquet,
and as pyarrow record batches (``Client.results_table``).

- JSON lines: each record as one object, values as they are (the answer and its nested
  properties as JSON objects and lists);
- CSV: a header, then one row per record; strings as they are, numbers as numbers,
  booleans, lists and objects as JSON text (``true``, ``["a"]``), null empty; text cells
  that a spreadsheet would run as a formula get a leading ``'`` unless ``formulas``;
- Parquet: typed columns (`batchrun.export.shapes`), in row groups of
  :data:`~batchrun.export.parquet.ROW_GROUP_ROWS` built one at a time.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import IO, Any

from batchrun.export.flat import neutralise_formula
from batchrun.export.joined import JoinedLayout, text_cell
from batchrun.export.parquet import ROW_GROUP_ROWS, pyarrow_modules
from batchrun.export.shapes import arrow_type, fit

JOINED_FORMATS = ("flat", "csv", "parquet")


def write_joined_jsonl(records: Iterable[dict[str, Any]], stream: IO[str]) -> int:
    """One JSON object per record and line; returns how many."""
    count = 0
    for record in records:
        stream.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count


def write_joined_csv(
    records: Iterable[dict[str, Any]],
    stream: IO[str],
    plan: JoinedLayout,
    *,
    formulas: bool = False,
) -> int:
    """A header and one CSV row per record (RFC 4180); returns how many rows."""
    writer = csv.writer(stream, lineterminator="\r\n")
    writer.writerow(plan.names)
    count = 0
    for record in records:
        cells = ["" if (cell := text_cell(value)) is None else cell for value in record.values()]
        writer.writerow(cells if formulas else [neutralise_formula(cell) for cell in cells])
        count += 1
    return count


def arrow_schema(pa: Any, plan: JoinedLayout) -> Any:
    """The pyarrow schema of the joined columns, every field nullable."""
    return pa.schema([pa.field(name, arrow_type(pa, shape)) for name, _, _, shape in plan.columns])


def record_batches(
    records: Iterable[dict[str, Any]],
    plan: JoinedLayout,
    *,
    rows_per_batch: int = ROW_GROUP_ROWS,
) -> Iterator[Any]:
    """The records as pyarrow RecordBatches of ``rows_per_batch`` rows, each built when the
    previous one is taken; a MissingExtraError if pyarrow is missing."""
    pa, _ = pyarrow_modules("the joined results")
    schema = arrow_schema(pa, plan)
    shapes = [shape for _, _, _, shape in plan.columns]
    names = plan.names
    stream = iter(records)
    while chunk := list(islice(stream, rows_per_batch)):
        columns = [
            [fit(shape, record[name]) for record in chunk]
            for name, shape in zip(names, shapes, strict=True)
        ]
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(values, type=field.type)
                for values, field in zip(columns, schema, strict=True)
            ],
            schema=schema,
        )


def write_joined_parquet(
    records: Iterable[dict[str, Any]],
    stream: IO[bytes],
    plan: JoinedLayout,
    *,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> int:
    """The records as a Parquet file, a row group at a time; returns how many."""
    pa, pq = pyarrow_modules("the joined results")
    count = 0
    with pq.ParquetWriter(stream, arrow_schema(pa, plan), compression="zstd") as writer:
        for batch in record_batches(records, plan, rows_per_batch=row_group_rows):
            writer.write_batch(batch, row_group_size=row_group_rows)
            count += batch.num_rows
    return count


def table_of(records: Iterable[dict[str, Any]], plan: JoinedLayout) -> Any:
    """The records as one pyarrow Table (the Parquet export's columns and types)."""
    pa, _ = pyarrow_modules("results_table")
    return pa.Table.from_batches(list(record_batches(records, plan)), schema=arrow_schema(pa, plan))


def write_joined(
    records: Iterable[dict[str, Any]],
    stream: IO[Any],
    plan: JoinedLayout,
    *,
    format: str,
    csv_raw: bool = False,
) -> int:
    """Write the records in ``format`` (one of :data:`JOINED_FORMATS`); returns how many."""
    if format == "flat":
        return write_joined_jsonl(records, stream)
    if format == "csv":
        return write_joined_csv(records, stream, plan, formulas=csv_raw)
    return write_joined_parquet(records, stream, plan)
