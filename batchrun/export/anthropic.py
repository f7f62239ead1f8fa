"""The ``anthropic`` export format: one JSON line per request in Anthropic's batch results
format, which the official SDK's ``MessageBatchIndividualResponse`` parses.

Lines come in input order. A line carries the stored response text without parsing and
re-encoding it, only with the whitespace between JSON tokens taken out: every line is compact
JSON, as the API writes it, whatever spacing a server used, and what is inside a string (its
escapes included) stays exactly as received.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import IO

from batchrun.config.prices import PriceTable
from batchrun.records import ResultDetail, ResultRow

_BARE_RESULTS = {"canceled", "expired"}
# A JSON string, matched whole so that its contents are kept (possessive quantifiers: the
# scan never backtracks, so a long string costs one pass), or whitespace between tokens.
_STRING = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_STRING_OR_SPACE = re.compile(f"({_STRING})|[ \t\n\r]+")
# Whether any whitespace stands outside a string: one pass that builds nothing, so a body
# that is already compact (nearly all: the API's own) is returned as it is.
_SPACE_OUTSIDE_STRINGS = re.compile(rf'(?:[^"\s]++|{_STRING})*+\s')


def compact_json(text: str) -> str:
    """``text`` (JSON) without the whitespace between its tokens; strings are untouched."""
    if _SPACE_OUTSIDE_STRINGS.match(text) is None:
        return text
    # An unmatched group is replaced by nothing: whitespace goes, strings stay.
    return _STRING_OR_SPACE.sub(r"\1", text)


def anthropic_lines(rows: Iterable[ResultDetail | ResultRow]) -> Iterator[str]:
    """The Anthropic results line of every finished request (without newline); requests
    still open are skipped."""
    for row in rows:
        head = '{"custom_id":' + json.dumps(row.custom_id) + ',"result":{"type":'
        if row.state == "succeeded" and row.body is not None:
            yield head + '"succeeded","message":' + compact_json(row.body) + "}}"
        elif row.state == "errored" and row.body is not None:
            yield head + '"errored","error":' + compact_json(row.body) + "}}"
        elif row.state in _BARE_RESULTS:
            yield head + '"' + row.state + '"}}'


def write_anthropic(rows: Iterable[ResultDetail], stream: IO[str], _prices: PriceTable) -> int:
    """Write the results lines; returns how many."""
    count = 0
    for line in anthropic_lines(rows):
        stream.write(line + "\n")
        count += 1
    return count
