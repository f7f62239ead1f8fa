"""The ``parquet`` export format: the flat columns, typed, in a Parquet file.

The columns are the flat export's (:data:`~batchrun.export.flat.COLUMNS`, same names, same
order), and the values come from the same row builder
(:func:`~batchrun.export.flat.flat_values`), so a Parquet export says what a flat one says.
What Parquet adds is types: times are ``timestamp[us, tz=UTC]``, counts ``int64``,
``cost_usd`` a ``float64`` (what pandas and polars compute with) and ``cost_usd_exact`` the
same amount as a decimal (exact sums), ``reused`` a boolean; ``tool_use`` is JSON text, as in
CSV, since a tool's ``input`` has no fixed shape.

Rows are written in row groups of :data:`ROW_GROUP_ROWS`, each built from the store's stream
and written before the next is read, so an export of 100,000 results holds one group in
memory, not the batch.

pyarrow is an optional extra (``pip install 'batchrun-llm[parquet]'``, or ``pip install
pyarrow``) and is imported only when this format writes, so neither ``--help`` nor the other
formats load it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import IO, Any

from batchrun.config.prices import PriceTable
from batchrun.errors import MissingExtraError
from batchrun.export.flat import COLUMNS, COST_USD_DECIMALS, flat_values, tool_use_json
from batchrun.records import ResultDetail

# Rows per row group: a reader skips or reads a group as a whole, and the writer holds one
# in memory (measured: about 65 MB above pyarrow's own for 10,000 short replies; a peak RSS
# of 150 MB for 100,000 results as for 20,000).
ROW_GROUP_ROWS = 10_000
# Decimal digits of `cost_usd_exact` in all. A decimal beside the float `cost_usd` because it
# is money: a sum in DuckDB is then exact, not off in the 16th digit (pandas reads it as
# Python Decimal objects, which is why `cost_usd` is a float). The scale is the flat export's
# rounding, so the value is the number the JSON and CSV show; 18 digits is the most a
# Parquet reader stores in 64 bits, which leaves 10 before the point.
COST_USD_PRECISION = 18
# zstd: the text columns take about half the space they take with Parquet's default
# (snappy: 6.2 MB against 3.4 MB for 100,000 simulator replies), and DuckDB, pandas, polars
# and Spark read it.
_COMPRESSION = "zstd"


def _pyarrow() -> tuple[Any, Any]:
    """The ``pyarrow`` and ``pyarrow.parquet`` modules; a MissingExtraError saying how to
    install them when they are missing."""
    return pyarrow_modules("--format parquet")


def pyarrow_modules(what: str) -> tuple[Any, Any]:
    """The ``pyarrow`` and ``pyarrow.parquet`` modules; a MissingExtraError (``what`` needs
    pyarrow: how to install it) when they cannot be imported."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "pyarrow"
        why = "" if missing else f" (importing it failed: {exc})"
        raise MissingExtraError(
            f"{what} needs pyarrow{why}: pip install pyarrow (or 'batchrun-llm[parquet]')",
            module="pyarrow",
        ) from None
    return pyarrow, pyarrow.parquet


def parquet_schema(pa: Any) -> Any:
    """The pyarrow schema of the export: :data:`COLUMNS` in order, every field nullable."""
    types = {
        "line": pa.int64(),
        "input_tokens": pa.int64(),
        "output_tokens": pa.int64(),
        "cache_creation_input_tokens": pa.int64(),
        "cache_read_input_tokens": pa.int64(),
        "cache_creation_1h_input_tokens": pa.int64(),
        "cost_usd": pa.float64(),
        "cost_usd_exact": pa.decimal128(COST_USD_PRECISION, COST_USD_DECIMALS),
        "attempts": pa.int64(),
        "repair_sends": pa.int64(),
        "latency_ms": pa.int64(),
        "http_status": pa.int64(),
        "created_at": pa.timestamp("us", tz="UTC"),
        "started_at": pa.timestamp("us", tz="UTC"),
        "completed_at": pa.timestamp("us", tz="UTC"),
        "reused": pa.bool_(),
        "cache_hit_rate": pa.float64(),
        "cache_saved_usd": pa.float64(),
    }
    # The other columns are text. A new flat column that is not fails loudly on its first
    # row (pyarrow refuses a number for a string), rather than being exported as text.
    return pa.schema([pa.field(name, types.get(name, pa.string())) for name in COLUMNS])


def _parquet_values(rows: Iterable[ResultDetail], prices: PriceTable) -> Iterator[dict[str, Any]]:
    for record in flat_values(rows, prices):
        record["tool_use"] = tool_use_json(record["tool_use"])
        yield record


def flat_batches(
    rows: Iterable[ResultDetail], prices: PriceTable, *, rows_per_batch: int = ROW_GROUP_ROWS
) -> Iterator[Any]:
    """The flat columns of the rows as pyarrow Tables of ``rows_per_batch`` rows, each built
    when the previous one is taken; a MissingExtraError if pyarrow is missing."""
    pa, _ = _pyarrow()
    schema = parquet_schema(pa)
    records = _parquet_values(rows, prices)
    while group := list(islice(records, rows_per_batch)):
        yield pa.Table.from_pylist(group, schema=schema)


def flat_table(rows: Iterable[ResultDetail], prices: PriceTable) -> Any:
    """The flat columns of the rows as one pyarrow Table (``Client.results_table``)."""
    pa, _ = pyarrow_modules("results_table")
    groups = list(flat_batches(rows, prices))
    return pa.concat_tables(groups) if groups else parquet_schema(pa).empty_table()


def write_parquet(
    rows: Iterable[ResultDetail],
    stream: IO[bytes],
    prices: PriceTable,
    *,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> int:
    """Write the rows as a Parquet file, ``row_group_rows`` per row group, to a binary
    stream; returns how many. A MissingExtraError before anything is written if pyarrow is
    missing."""
    pa, pq = _pyarrow()
    count = 0
    # Given a stream rather than a path, the writer leaves it open for atomic_output.
    with pq.ParquetWriter(stream, parquet_schema(pa), compression=_COMPRESSION) as writer:
        for group in flat_batches(rows, prices, rows_per_batch=row_group_rows):
            writer.write_table(group, row_group_size=row_group_rows)
            count += group.num_rows
    return count
