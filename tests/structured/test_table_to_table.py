"""Issue 28's bar, end to end: 300 ticket rows and a template with a schema (an enum, an
integer and a string) against a server that answers a fifth of structured requests with JSON
that does not validate, with ``repair = 2``: at least 98 % of the rows end succeeded with
every field valid, the rest ``invalid_output`` with their last answer kept, at most 1.3 sends
per row, and the joined table holds the 300 rows in input order with one typed column per
schema property. From a CSV file, from a DataFrame with a Pydantic model, and in the batch
lane; on SQLite and Postgres. The simulator runs on a socket and announces a limit far above
what is sent, as Anthropic does, so the run does not slow-start."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

import batchrun
from batchrun.simulator import ModelLimits, SimulatorConfig, create_app, running_simulator
from batchrun.store import tables as t
from batchrun.store.store import Store
from tests.cli.test_run_endpoints import gateway

ROWS = 300
# The directive rides in the system prompt, so a repair send draws again: after two repairs
# about 0.2³ of the rows are still invalid.
SYSTEM = "You triage support tickets. [[sim:invalid_output=0.2]]"
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["category", "priority", "summary"],
    "properties": {
        "category": {"enum": ["billing", "bug", "account", "other"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string"},
    },
}
TEMPLATE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 200,
    "system": SYSTEM,
    "user": "Ticket {{ ticket_id }} from {{ customer }}: {{ subject }}",
    "id": "t-{{ ticket_id }}",
    "repair": 2,
}
HEADER = ["ticket_id", "customer", "subject"]


class Category(StrEnum):
    billing = "billing"
    bug = "bug"
    account = "account"
    other = "other"


class Triage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: Category
    priority: int = Field(ge=1, le=5)
    summary: str


def tickets() -> list[dict[str, str]]:
    subjects = ["refund please", "app crashes on start", "cannot log in", "question"]
    return [
        {
            "ticket_id": str(1000 + 7 * n),
            "customer": f"customer {n % 37}",
            "subject": f"{subjects[n % 4]} (#{n})",
        }
        for n in range(ROWS)
    ]


@pytest.fixture
def client(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[batchrun.Client]:
    monkeypatch.chdir(tmp_path)
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def repair_sends(store: Store, batch_id: str) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.coalesce(func.sum(t.batch_repairs.c.sends), 0)).where(
                    t.batch_repairs.c.batch_id == batch_id
                )
            ).scalar_one()
        )


def invalid_outputs_with_their_answer(store: Store, batch_id: str) -> tuple[int, int]:
    """How many results ended invalid_output, and how many of them kept the last answer."""
    r = t.results.c
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(r.raw_body).where(r.batch_id == batch_id, r.error_type == "invalid_output")
        ).all()
    return len(rows), sum(1 for (body,) in rows if body and json.loads(body).get("content"))


@pytest.mark.parametrize("way", ["csv", "dataframe", "batch-lane"])
def test_300_rows_with_a_fifth_invalid_end_valid_after_repairs_and_join_back_typed(
    client: batchrun.Client, store: Store, tmp_path: Path, way: str
) -> None:
    rows = tickets()
    app = create_app(
        SimulatorConfig(limits={"*": ModelLimits(rpm=1_000_000)}, batch_processing_s=0.3, seed=28)
    )
    with running_simulator(app=app) as url:
        (tmp_path / "batchrun.toml").write_text(gateway("sim", url, batch_api="anthropic"))
        if way == "dataframe":
            batch = client.submit_table(
                pd.DataFrame(rows), template=TEMPLATE, output=Triage, endpoint="sim"
            )
        else:
            path = tmp_path / "tickets.csv"
            with path.open("w", newline="", encoding="utf-8") as stream:
                writer = csv.DictWriter(stream, fieldnames=HEADER)
                writer.writeheader()
                writer.writerows(rows)
            batch = client.submit_table(
                path,
                template={**TEMPLATE, "output": SCHEMA},
                endpoint="sim",
                lane="batch" if way == "batch-lane" else "realtime",
            )
        client.run(batch.id, poll_interval_s=0.2, stop_on_signals=False)
        received = app.stats.received

    joined = client.results_table(batch.id)
    repairs = repair_sends(store, batch.id)
    invalid, kept = invalid_outputs_with_their_answer(store, batch.id)

    # Every row back, in input order, its input columns unchanged.
    assert joined.num_rows == ROWS
    assert joined.select(HEADER).to_pylist() == rows
    assert joined.column("custom_id").to_pylist() == [f"t-{row['ticket_id']}" for row in rows]
    # One typed column per schema property.
    assert joined.schema.field("answer_category").type == pa.string()
    assert joined.schema.field("answer_priority").type == pa.int64()
    assert joined.schema.field("answer_summary").type == pa.string()
    validator = Draft202012Validator(SCHEMA)
    succeeded = 0
    for record in joined.to_pylist():
        if record["result_type"] == "succeeded":
            succeeded += 1
            answer = json.loads(record["answer"])
            assert validator.is_valid(answer), answer
            assert [record[f"answer_{name}"] for name in SCHEMA["properties"]] == [
                answer[name] for name in SCHEMA["properties"]
            ]
        else:
            assert (record["result_type"], record["error_type"]) == ("errored", "invalid_output")
            assert record["answer"] is None and record["answer_priority"] is None
    assert succeeded >= 0.98 * ROWS
    # Each row's cost counts its repaired answers: the rows add up to the batch's cost.
    status = client.status(batch.id)
    assert sum(joined.column("cost_usd").to_pylist()) == pytest.approx(status.cost_usd, rel=1e-9)
    assert sum(joined.column("input_tokens").to_pylist()) == status.usage.input_tokens
    assert sum(joined.column("repair_sends").to_pylist()) == repairs
    assert invalid == ROWS - succeeded == kept
    # A fifth invalid, then a fifth of the repairs: about 1.24 sends a row.
    assert repairs > 0
    assert ROWS + repairs <= 1.3 * ROWS
    if way != "batch-lane":
        assert received == ROWS + repairs  # the server saw exactly those sends
    else:
        # The provider batch held the 300 rows; every repair went in real time.
        assert received == repairs
