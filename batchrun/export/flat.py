"""The ``flat`` and ``csv`` export formats: one flat record per request, for analytics.

Where the ``anthropic`` format writes Anthropic's results format (nested, as the SDK parses
it), this module writes one flat record per finished request, with the same columns in both
formats (the docs list them; ``export.parquet`` writes them typed, from :func:`flat_values`).
Rows stream from the store and are written one at a time, so an export takes constant memory
whatever the batch size.

- ``text``: the text blocks of the reply, joined with a newline;
- ``tool_use``: the reply's tool_use blocks as ``[{"id", "name", "input"}]`` (in CSV, that
  list as JSON text);
- the token columns and ``cost_usd``: every answer the request paid for, its result and
  the earlier answers that did not match its schema and were repaired (``answer_turns``,
  :func:`paid_sends`), so that the rows add up to the batch's totals; each answer is priced
  with its own model by the price table (:func:`~batchrun.config.prices.cost_of`), times
  the share of the list price its lane billed (0 for a reused answer); ``cost_usd`` is empty
  (null) when a model has no price; ``cost_usd_exact`` is the same amount as fixed-point
  decimal text (``0.00123400``), and a decimal in Parquet, for sums that must not drift;
- ``repair_sends``: the repair sends the request took (0 for none), as ``status`` counts
  them; ``attempts`` counts them too;
- ``model``: the model the response names, else the request's; null for an input line that
  named none (``submit --skip-invalid``);
- ``reused``/``reused_from``: the answer is a stored one (``submit --reuse``, or a duplicate
  of the batch), from that batch; nothing was sent for it;
- ``cache_hit_rate``: cache reads ÷ (cache reads + cache writes), null when both are 0;
- ``cache_saved_usd``: what the request's cache reads saved against writing that prefix
  (:func:`~batchrun.config.prices.cache_saved_usd`, at its lane's share of the price), null
  when the model has no price;
- times are UTC, ISO 8601 (``2026-11-22T05:40:00.123Z``); ``created_at`` is when the batch
  was submitted, ``started_at`` the first send, ``completed_at`` when the result was stored;
- text leaves as UTF-8: a NUL or a lone surrogate an answer held (as a JSON escape) is
  U+FFFD in ``text`` and ``tool_use``, as in every stored text column (``store.textsafe``);
- CSV cells of text that a spreadsheet would run as a formula (starting with ``=``, ``+``,
  ``-``, ``@``, a tab or a carriage return) get a leading ``'`` unless ``formulas`` is
  asked for (``--csv-raw``); numbers, and text that is just a number, are never changed
  (see :func:`neutralise_formula`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import IO, Any

from batchrun.config.prices import PriceTable, cache_saved_usd, cost_of
from batchrun.errors import DatabaseError
from batchrun.records import Lane, ModelTokens, ResultDetail, cache_hit_rate
from batchrun.store.textsafe import safe_text, safe_value

COLUMNS = (
    "batch_id",
    "custom_id",
    "line",
    "status",
    "model",
    "stop_reason",
    "text",
    "tool_use",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_1h_input_tokens",
    "cost_usd",
    "cost_usd_exact",
    "attempts",
    "repair_sends",
    "latency_ms",
    "http_status",
    "request_id",
    "error_type",
    "error_message",
    "created_at",
    "started_at",
    "completed_at",
    "raw_body",
    "endpoint",
    "lane",
    "reused",
    "reused_from",
    "cache_hit_rate",
    "cache_saved_usd",
)
# The token columns: the sums of the result's usage and its earlier invalid answers'.
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_1h_input_tokens",
)
# The columns that hold times: datetimes in :func:`flat_values`, ISO 8601 text in
# :func:`flat_records`.
TIME_COLUMNS = ("created_at", "started_at", "completed_at")
# ``cost_usd`` is rounded to this many decimal places (a hundredth of a micro-dollar: a
# token's price can be a few hundredths of a micro-dollar, e.g. cache reads at a discount).
COST_USD_DECIMALS = 8
_COST_QUANTUM = Decimal(1).scaleb(-COST_USD_DECIMALS)
# A text cell starting with one of these is a formula to a spreadsheet (OWASP's list for CSV
# injection): "=", "+", "-" and "@" start one, and a leading tab or carriage return is
# skipped by some spreadsheets before they look.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Text that is a plain decimal number ("-5", "+1.5e3") runs nothing: it is left as it is, so
# that a spreadsheet reads it as the number it is.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _when(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reply(row: ResultDetail) -> tuple[str | None, list[dict[str, Any]]]:
    """The text and tool_use blocks of a succeeded row's Message."""
    if row.state != "succeeded" or row.body is None:
        return None, []
    try:
        message = json.loads(row.body)
    except ValueError:
        raise DatabaseError(
            f"the stored response of {row.custom_id} (batch {row.batch_id}) is not JSON; "
            "the database is damaged"
        ) from None
    texts: list[str] = []
    tools: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(safe_text(str(block.get("text", ""))))
        elif block.get("type") == "tool_use":
            tools.append({k: safe_value(block.get(k)) for k in ("id", "name", "input")})
    return "\n".join(texts), tools


def flat_values(rows: Iterable[ResultDetail], prices: PriceTable) -> Iterator[dict[str, Any]]:
    """One flat record per row, with :data:`COLUMNS` as keys, in the rows' order, holding
    Python values: times as datetimes (UTC), ``tool_use`` as a list, ``cost_usd`` as a float
    rounded to :data:`COST_USD_DECIMALS` places and ``cost_usd_exact`` as that Decimal (with
    exactly that many places). Each format spells them its own way."""
    for row in rows:
        text, tools = _reply(row)
        sends = paid_sends(row)
        tokens = _summed(sends)
        cost = saved = None
        if sends:
            total = cost_of(sends, prices)
            cost = None if total.usd is None else round(total.usd, COST_USD_DECIMALS)
            saved = _saved_usd(sends, prices)
        yield {
            "batch_id": row.batch_id,
            "custom_id": row.custom_id,
            "line": row.line_no,
            "status": row.state,
            # A bad input line kept by --skip-invalid names no model: null, not "".
            "model": row.model or None,
            "stop_reason": row.stop_reason,
            "text": text,
            "tool_use": tools,
            **tokens,
            "cost_usd": cost,
            # Through its repr: the float's shortest spelling is the rounded decimal.
            "cost_usd_exact": None if cost is None else Decimal(repr(cost)).quantize(_COST_QUANTUM),
            "attempts": row.attempts,
            "repair_sends": row.repair_sends,
            "latency_ms": row.latency_ms,
            "http_status": row.http_status,
            "request_id": row.request_ref,
            "error_type": row.error_type,
            "error_message": row.error_message,
            "created_at": row.created_at,
            "started_at": row.started_at,
            "completed_at": row.completed_at,
            "raw_body": row.raw_body,
            "endpoint": row.endpoint,
            "lane": row.lane,
            "reused": row.reused_from is not None,
            "reused_from": row.reused_from,
            "cache_hit_rate": cache_hit_rate(
                tokens["cache_read_input_tokens"], tokens["cache_creation_input_tokens"]
            ),
            "cache_saved_usd": None if saved is None else round(saved, COST_USD_DECIMALS),
        }


def paid_sends(row: ResultDetail) -> list[ModelTokens]:
    """The answers a row paid for, each with its model, lane and share of the list price:
    its result (when it reports usage) and its earlier answers that did not match the
    schema (``ResultDetail.turns``); empty when none reports usage."""
    sends = list(row.turns)
    if row.input_tokens is not None:
        result = ModelTokens(
            row.model or "",
            1,
            row.input_tokens or 0,
            row.output_tokens or 0,
            row.cache_creation_input_tokens or 0,
            row.cache_read_input_tokens or 0,
            lane=row.lane or Lane.REALTIME,
            cost_factor=1.0 if row.cost_factor is None else row.cost_factor,
            cache_creation_1h_input_tokens=row.cache_creation_1h_input_tokens or 0,
        )
        sends.insert(0, result)
    return sends


def _summed(sends: list[ModelTokens]) -> dict[str, int | None]:
    """The token columns of these answers: their sums, null when none reports usage."""
    return {
        name: sum(getattr(send, name) for send in sends) if sends else None
        for name in TOKEN_COLUMNS
    }


def _saved_usd(sends: list[ModelTokens], prices: PriceTable) -> float | None:
    """What these answers' cache reads saved (each at its own price and share), None when
    one's model has no price."""
    saved = 0.0
    for send in sends:
        price = prices.price_for(send.model)
        if price is None:
            return None
        saved += cache_saved_usd(price, send.cache_read_input_tokens, send.cost_factor)
    return saved


def flat_records(rows: Iterable[ResultDetail], prices: PriceTable) -> Iterator[dict[str, Any]]:
    """:func:`flat_values` with the times as ISO 8601 text (``2026-11-22T05:40:00.123Z``) and
    ``cost_usd_exact`` as fixed-point text (``0.00123400``), as the JSON and CSV exports
    write them."""
    for record in flat_values(rows, prices):
        for column in TIME_COLUMNS:
            record[column] = _when(record[column])
        exact = record["cost_usd_exact"]
        record["cost_usd_exact"] = None if exact is None else f"{exact:f}"
        yield record


def tool_use_json(tools: list[dict[str, Any]]) -> str | None:
    """The ``tool_use`` column as text (CSV, Parquet): the list as JSON, None when empty."""
    return json.dumps(tools, ensure_ascii=False) if tools else None


def write_flat_jsonl(rows: Iterable[ResultDetail], stream: IO[str], prices: PriceTable) -> int:
    """Write one flat JSON object per row, one per line; returns how many."""
    count = 0
    for record in flat_records(rows, prices):
        stream.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count


def neutralise_formula(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as the text it is: text starting with one of
    :data:`FORMULA_STARTS` gets a leading ``'`` (OWASP's advice against CSV injection), which
    spreadsheets take as "this cell is text" and do not display. Numbers are returned as they
    are, negative ones included, and so is text that is nothing but a decimal number (an
    answer ``-5``): neither can run anything."""
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_STARTS)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def write_csv(
    rows: Iterable[ResultDetail], stream: IO[str], prices: PriceTable, *, formulas: bool = False
) -> int:
    """Write a header and one CSV row per row (RFC 4180: CRLF, quoted as needed; nulls
    empty; ``tool_use`` as JSON text, empty when there is none); returns how many rows.
    Text cells that would start a formula are neutralised (:func:`neutralise_formula`)
    unless ``formulas`` is true (for programs that read the file, not spreadsheets)."""
    writer = csv.writer(stream, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    count = 0
    for record in flat_records(rows, prices):
        record["tool_use"] = tool_use_json(record["tool_use"])
        cells = ["" if record[c] is None else record[c] for c in COLUMNS]
        writer.writerow(cells if formulas else [neutralise_formula(cell) for cell in cells])
        count += 1
    return count


def write_csv_with_formulas(
    rows: Iterable[ResultDetail], stream: IO[str], prices: PriceTable
) -> int:
    """:func:`write_csv` with every cell as it is (``results --format csv --csv-raw``)."""
    return write_csv(rows, stream, prices, formulas=True)
