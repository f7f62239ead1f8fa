"""The values that cross layers: a :class:`Lane` is written, exported and printed as its plain
string, so naming lanes once changed no stored or shown byte."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

import orjson

from batchrun.records import Lane, NewBatch


def test_the_lanes_are_realtime_batch_and_auto_in_that_order() -> None:
    assert [str(lane) for lane in Lane] == ["realtime", "batch", "auto"]
    assert Lane("batch") is Lane.BATCH


def test_a_lane_is_its_plain_string_in_json_text_and_comparisons() -> None:
    assert json.dumps({"lane": Lane.REALTIME}) == '{"lane": "realtime"}'
    assert orjson.dumps({"lane": Lane.BATCH}) == b'{"lane":"batch"}'
    assert f"{Lane.AUTO} lane" == "auto lane"
    assert type(str(Lane.AUTO)) is str
    # As read back from the database: a plain string equals the member, and finds it.
    assert Lane.REALTIME == "realtime"
    assert {"batch": 1}.get(Lane.BATCH) == 1


def test_a_lane_default_is_stored_as_the_plain_string() -> None:
    now = datetime.now(UTC)
    batch = NewBatch(id="b", name=None, endpoint="e", source=None, created_at=now, expires_at=now)
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE batches (lane TEXT)")
        db.execute("INSERT INTO batches VALUES (?)", (batch.lane,))
        (stored,) = db.execute("SELECT lane FROM batches").fetchone()

    assert (stored, type(stored)) == ("realtime", str)
