"""A batch's results joined to the table rows it was rendered from, read from the store:
the columns (a first pass over the stored rows) and the records (a second, streamed), for
``results --with-input`` (`export_joined`), ``Client.results_table`` (`joined_table`) and
``Client.parsed`` (`parsed_rows`).

The joining itself is `batchrun.export.joined`'s; this module says which batch may be
joined (one submitted from a table) and wires the store's streams into it.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar

from batchrun.config.prices import PriceTable
from batchrun.errors import BatchStateError
from batchrun.export.atomic import atomic_output
from batchrun.export.joined import (
    SURVEY_PAGE_ROWS,
    AnswerSpec,
    JoinedLayout,
    answer_of,
    input_row,
    joined_records,
    survey,
)
from batchrun.export.joined import layout as joined_layout
from batchrun.export.joined_files import table_of, write_joined
from batchrun.export.parquet import pyarrow_modules
from batchrun.store.store import Store

if TYPE_CHECKING:
    from pydantic import BaseModel

# The Pydantic model `parsed_rows` reads answers into.
M = TypeVar("M", bound="BaseModel")


@dataclass
class Joined:
    """The joined columns of a batch and its records, one per input row, in input order
    (streamed: close ``records`` when stopping early)."""

    layout: JoinedLayout
    records: Generator[dict[str, Any], None, None]


def joined_results(store: Store, batch_id: str, prices: PriceTable, *, partial: bool) -> Joined:
    """The batch's joined results; BatchStateError for a batch that was not submitted from
    a table, or (without ``partial``) one that has not ended."""
    batch = store.batches.get(batch_id)
    if not store.batches.table_rows(batch_id, limit=1):
        raise BatchStateError(
            f"batch {batch_id} was not submitted from a table (submit TABLE --template), so it "
            "has no rows to join its results to; leave out --with-input",
            batch_id=batch_id,
        )
    if batch.processing_status != "ended" and not partial:
        raise BatchStateError(
            f"batch {batch_id} has not ended ({batch.counts.processing:,} requests still "
            "processing); run it to the end, or pass --partial (its open rows get null results)",
            batch_id=batch_id,
        )
    inputs = survey(
        lambda after: store.batches.table_rows(batch_id, after_row_no=after, limit=SURVEY_PAGE_ROWS)
    )
    spec = AnswerSpec.of_params(store.results.answer_params(batch_id))
    plan = joined_layout(inputs, spec)
    return Joined(plan, joined_records(store.results.iter_joined(batch_id), prices, plan))


def export_joined(
    store: Store,
    batch_id: str,
    prices: PriceTable,
    output: str | os.PathLike[str] | IO[Any],
    *,
    format: str,
    partial: bool,
    csv_raw: bool,
) -> int:
    """Write the batch's joined results in ``format`` (``flat``, ``csv``, ``parquet``) to a
    file, atomically, or to an open stream; returns how many rows."""
    if format == "parquet":
        pyarrow_modules("--format parquet")  # before anything is read or written
    joined = joined_results(store, batch_id, prices, partial=partial)
    try:
        if isinstance(output, str | os.PathLike):
            with atomic_output(output, binary=format == "parquet") as stream:
                return write_joined(
                    joined.records, stream, joined.layout, format=format, csv_raw=csv_raw
                )
        return write_joined(joined.records, output, joined.layout, format=format, csv_raw=csv_raw)
    finally:
        joined.records.close()


def joined_table(store: Store, batch_id: str, prices: PriceTable, *, partial: bool) -> Any:
    """The batch's joined results as one pyarrow Table (the joined Parquet's columns)."""
    pyarrow_modules("results_table")
    joined = joined_results(store, batch_id, prices, partial=partial)
    try:
        return table_of(joined.records, joined.layout)
    finally:
        joined.records.close()


def parsed_rows(
    store: Store, batch_id: str, prices: PriceTable, model: type[M], *, partial: bool
) -> Generator[tuple[dict[str, Any], M | None], None, None]:
    """Each input row as a dict with its answer validated into ``model`` (None: failed, not
    finished, or not matching the schema or the model), in input order."""
    from pydantic import ValidationError

    joined = joined_results(store, batch_id, prices, partial=partial)
    try:
        for record in joined.records:
            answer = answer_of(record, joined.layout)
            value = None
            if answer is not None:
                try:
                    value = model.model_validate(answer)
                except ValidationError:
                    value = None
            yield input_row(record, joined.layout), value
    finally:
        joined.records.close()
