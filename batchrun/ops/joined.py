"""A batch's results joined to the table rows it was rendered from, read from the store:
the columns (a first pass over the stored rows) and the records (a second, streamed), for
``results --with-input``, ``Client.results_table`` and ``Client.parsed``.

The joining itself is `batchrun.export.joined`'s; this module says which batch may be
joined (one submitted from a table) and wires the store's streams into it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from batchrun.config.prices import PriceTable
from batchrun.errors import BatchStateError
from batchrun.export.joined import (
    SURVEY_PAGE_ROWS,
    AnswerSpec,
    JoinedLayout,
    joined_records,
    survey,
)
from batchrun.export.joined import layout as joined_layout
from batchrun.store.store import Store


@dataclass
class Joined:
    """The joined columns of a batch and its records, one per input row, in input order
    (streamed: close ``records`` when stopping early)."""

    layout: JoinedLayout
    records: Iterator[dict[str, Any]]


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
