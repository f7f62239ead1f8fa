"""The ``anthropic`` export format: one JSON line per request in Anthropic's batch results
format, which the official SDK's ``MessageBatchIndividualResponse`` parses.

Lines come in input order. A succeeded line carries the stored response text as is (it is
already compact JSON), so exporting does not parse and re-encode every Message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO

from batchrun.config.prices import PriceTable
from batchrun.records import ResultDetail, ResultRow

_BARE_RESULTS = {"canceled", "expired"}


def anthropic_lines(rows: Iterable[ResultDetail | ResultRow]) -> Iterator[str]:
    """The Anthropic results line of every finished request (without newline); requests
    still open are skipped."""
    for row in rows:
        head = '{"custom_id":' + json.dumps(row.custom_id) + ',"result":{"type":'
        if row.state == "succeeded" and row.body is not None:
            yield head + '"succeeded","message":' + row.body + "}}"
        elif row.state == "errored" and row.body is not None:
            yield head + '"errored","error":' + row.body + "}}"
        elif row.state in _BARE_RESULTS:
            yield head + '"' + row.state + '"}}'


def write_anthropic(rows: Iterable[ResultDetail], stream: IO[str], _prices: PriceTable) -> int:
    """Write the results lines; returns how many."""
    count = 0
    for line in anthropic_lines(rows):
        stream.write(line + "\n")
        count += 1
    return count
