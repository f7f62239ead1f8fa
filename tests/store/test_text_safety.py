"""Text no column takes as it is (a lone surrogate, a NUL) is stored wherever it arrives, on
SQLite and Postgres: plain text columns get U+FFFD in its place, JSON columns its escape, so
the stored JSON says exactly what the server sent."""

from __future__ import annotations

import json
import timeit
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import String, create_engine, select

from batchrun.records import FinishedRequest, RetryLater, SendFailure, Usage
from batchrun.store import tables as t
from batchrun.store.store import Store
from batchrun.store.textsafe import is_clean, safe_json_text, safe_text, safe_value
from tests.conftest import request_line, submit

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ODD = "a\ud800b\x00c\udfffd"
SAFE = "a\ufffdb\ufffdc\ufffdd"


def test_safe_text_replaces_each_nul_and_surrogate_and_keeps_the_rest() -> None:
    assert safe_text(ODD) == SAFE
    assert safe_text("plain ascii") == "plain ascii"
    assert safe_text("héllo ✓ 😀") == "héllo ✓ 😀"
    # Two surrogate code points in a row are no character to UTF-8 either.
    assert safe_text("\ud83d\ude00") == "\ufffd\ufffd"
    assert safe_value({"k\x00": ["x\ud800", 1, None, {"y": "\x00"}]}) == {
        "k\ufffd": ["x\ufffd", 1, None, {"y": "\ufffd"}]
    }
    for text in ("", "ascii", "x\x00", "é\ud800", "é"):
        assert is_clean(text) == (safe_text(text) == text)


def test_safe_json_text_writes_escapes_that_decode_to_the_same_value() -> None:
    value = {"text": ODD, "pair": "\ud83d\ude00", "fine": "é😀"}
    raw = json.dumps(value, ensure_ascii=False)

    escaped = safe_json_text(raw)

    escaped.encode("utf-8")
    assert "\\ud800" in escaped and "\\u0000" in escaped and "é😀" in escaped
    # The two escapes of a surrogate pair join into the character they stand for.
    assert json.loads(escaped) == {**value, "pair": "😀"}
    clean = json.dumps({"fine": "é😀", "nul": "\x00"}, ensure_ascii=False)  # NUL: \u0000
    assert safe_json_text(clean) is clean


def test_every_text_column_of_every_table_is_made_safe() -> None:
    unsafe = [
        f"{table.name}.{column.name}"
        for table in t.metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, String)  # Text is a String: any bare one is caught
    ]

    assert unsafe == [], "use SafeString, SafeText or JsonText (batchrun.store.tables)"
    json_columns = {
        f"{table.name}.{column.name}"
        for table in t.metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, t.JsonText)
    }
    assert json_columns == {
        "requests.params",
        "results.body",
        "results.raw_body",
        "provider_batches.counts",
        "table_rows.data",
        "answer_turns.body",
        "answer_turns.errors",
    }


def _stored(db_url: str, table: Any, *columns: str) -> list[tuple[Any, ...]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            chosen = [table.c[name] for name in columns]
            return [tuple(row) for row in conn.execute(select(*chosen))]
    finally:
        engine.dispose()


def test_a_result_full_of_odd_text_is_stored_with_its_json_exact(store: Store, db_url: str) -> None:
    batch_id = submit(store, [request_line("a"), request_line("b")])
    a, b = store.leases.claim(owner="w1", batch_ids=[batch_id], limit=2, now=NOW, lease_s=60)
    message = {"type": "message", "content": [{"type": "text", "text": ODD}], "model": ODD}
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False)  # raw surrogates
    odd = FinishedRequest(
        request_id=a.id,
        batch_id=batch_id,
        custom_id="a",
        result_type="succeeded",
        attempts=1,
        completed_at=NOW,
        http_status=200,
        model="m" + ODD,
        stop_reason="end" + ODD,
        usage=Usage(1, 2, 0, 0),
        error_message=ODD,
        request_ref="req" + ODD,
        body=body,
        raw_body="not json \x00 \ud800",
        endpoint="e" + ODD,
    )
    retry = RetryLater(
        request_id=b.id,
        not_before=NOW,
        failures=1,
        last_error="HTTP 500 " + ODD,
        failed=SendFailure(batch_id, NOW, 5, "e" + ODD, 500, "api" + ODD),
    )

    store.results.record(owner="w1", now=NOW, finished=[odd], retries=[retry])
    store.lifecycle.pause(batch_id, "halted: " + ODD)
    store.health.record(endpoint="e" + ODD, state="open", reason=ODD, until=1.0, now=1.0)

    ((model, stop, message_text, ref, stored_body, raw, endpoint),) = _stored(
        db_url,
        t.results,
        "model",
        "stop_reason",
        "error_message",
        "request_ref",
        "body",
        "raw_body",
        "endpoint",
    )
    assert (model, stop, message_text, ref, endpoint) == (
        "m" + SAFE,
        "end" + SAFE,
        SAFE,
        "req" + SAFE,
        "e" + SAFE,
    )
    assert json.loads(stored_body) == message, "the JSON keeps the very value it had"
    assert raw == "not json \\u0000 \\ud800"
    last_errors = [row for row in _stored(db_url, t.requests, "last_error") if row[0]]
    assert last_errors == [("HTTP 500 " + SAFE,)]
    assert _stored(db_url, t.send_failures, "endpoint", "error_type") == [
        ("e" + SAFE, "api" + SAFE)
    ]
    assert store.batches.get(batch_id).paused_reason == "halted: " + SAFE
    assert _stored(db_url, t.endpoint_health, "reason") == [(SAFE,)]


def test_making_text_safe_costs_well_under_a_microsecond_per_clean_value() -> None:
    # What the store's write boundary pays for each text value, nearly always clean: a
    # Message of 2 kB (ASCII, and with non-ASCII text) and a short column value.
    message = json.dumps({"content": [{"text": "word " * 400}]})
    accented = message.replace("word", "wörd")
    values = {"ascii": message, "accented": accented, "short": "end_turn"}
    per_call_s = {}
    for name, value in values.items():
        runs = timeit.repeat(partial(safe_json_text, value), number=2000, repeat=5)
        per_call_s[name] = min(runs) / 2000

    assert per_call_s["ascii"] < 2e-6, per_call_s
    assert per_call_s["short"] < 1e-6, per_call_s
    # Non-ASCII text is scanned by the regex engine: still a few microseconds for 2 kB.
    assert per_call_s["accented"] < 50e-6, per_call_s


def test_a_model_with_a_nul_is_stored_safe_beside_models_stored_as_they_are(
    store: Store, db_url: str
) -> None:
    """The ingest binds a chunk's models unprocessed when none needs it; one that does makes
    the chunk's models go through the column's processor (Postgres refuses a NUL)."""
    lines = [request_line("a"), request_line("b", model="claude\x00x"), request_line("c")]
    plain = submit(store, [request_line("d")])
    odd = submit(store, lines)
    rows = _stored(db_url, t.requests, "batch_id", "custom_id", "model")
    assert sorted(rows) == sorted(
        [
            (plain, "d", "claude-sonnet-4-5"),
            (odd, "a", "claude-sonnet-4-5"),
            (odd, "b", "claude\ufffdx"),
            (odd, "c", "claude-sonnet-4-5"),
        ]
    )
