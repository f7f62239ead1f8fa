"""A row's usage and cost in the exports include the answers that were repaired: the
joined table (``Client.results_table``, ``results --with-input`` as CSV) and the flat export
count every answer a request paid for (its result and its ``answer_turns``), each priced
with its own lane's share, so the rows add up to what ``status`` shows; ``repair_sends``
says how many repair sends each row took. The simulator on a socket, real time and the
batch lane, on SQLite and Postgres."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import batchrun
from batchrun.ops.views.metrics import MetricsGatherer
from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from batchrun.store import tables as t
from batchrun.store.store import Store
from tests.cli.test_run_endpoints import gateway

TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
# Always broken (every repair too), or broken for a share of the bodies (a repair draws again).
BROKEN = "[[sim:invalid_output=1]]"
SOMETIMES = "[[sim:invalid_output=0.5]]"
TEMPLATE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 200,
    "user": "Triage: {{ text }}",
    "id": "r-{{ n }}",
    "output": {
        "type": "object",
        "required": ["category", "priority"],
        "properties": {
            "category": {"enum": ["billing", "bug", "other"]},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        },
    },
}


@pytest.fixture
def client(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[batchrun.Client]:
    monkeypatch.chdir(tmp_path)
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def table(tmp_path: Path, texts: list[str]) -> Path:
    path = tmp_path / "tickets.jsonl"
    path.write_text(
        "".join(json.dumps({"n": n, "text": text}) + "\n" for n, text in enumerate(texts))
    )
    return path


def stored(store: Store, batch_id: str) -> dict[str, dict[str, Any]]:
    """Per custom_id, straight from the tables: the request's repairs, its result's row and
    its answer_turns rows."""
    q, r, a = t.requests.c, t.results.c, t.answer_turns.c
    with store.engine.connect() as conn:
        requests = conn.execute(
            select(q.id, q.custom_id, q.repairs).where(q.batch_id == batch_id)
        ).all()
        results = {
            row.request_id: row
            for row in conn.execute(select(t.results).where(r.batch_id == batch_id))
        }
        turns = conn.execute(
            select(t.answer_turns).where(a.batch_id == batch_id).order_by(a.request_id, a.turn)
        ).all()
    return {
        row.custom_id: {
            "repairs": row.repairs,
            "result": results[row.id],
            "turns": [turn for turn in turns if turn.request_id == row.id],
        }
        for row in requests
    }


def check_rows_add_up(
    client: batchrun.Client, batch_id: str, records: list[dict[str, Any]], *, text: bool = False
) -> None:
    """The rows' cost and tokens sum to the batch's (status), and their repair sends too."""
    status = client.status(batch_id)
    assert status.cost_usd is not None and status.repair_sends > 0

    def number(value: Any) -> float:
        return float(value) if text else value

    assert sum(number(row["cost_usd"]) for row in records) == pytest.approx(
        status.cost_usd, rel=1e-9
    )
    for name in TOKENS:
        assert sum(int(number(row[name])) for row in records) == getattr(status.usage, name)
    assert sum(int(number(row["repair_sends"])) for row in records) == status.repair_sends


def test_joined_and_flat_rows_count_the_repaired_answers_and_sum_to_the_status_cost(
    client: batchrun.Client, store: Store, tmp_path: Path
) -> None:
    texts = [
        f"{BROKEN} printer {i}" if i % 4 == 1 else f"{SOMETIMES} refund {i}" for i in range(16)
    ]
    simulator = create_app(SimulatorConfig(seed=28))
    with running_simulator(app=simulator) as url:
        (tmp_path / "batchrun.toml").write_text(gateway("sim", url))
        batch = client.submit_table(
            table(tmp_path, texts), template=TEMPLATE, endpoint="sim", repair=2
        )
        client.run(batch.id, stop_on_signals=False)

    joined = client.results_table(batch.id).to_pylist()
    client.export(batch.id, tmp_path / "joined.csv", format="csv", with_input=True)
    with (tmp_path / "joined.csv").open(newline="", encoding="utf-8") as stream:
        joined_csv = list(csv.DictReader(stream))
    client.export(batch.id, tmp_path / "flat.jsonl", format="flat")
    flat = [json.loads(line) for line in (tmp_path / "flat.jsonl").read_text().splitlines()]
    flat_table = client.results_table(batch.id, with_input=False).to_pylist()

    rows = stored(store, batch.id)
    # Repairs happened: every always-broken row took two, some others one, some none.
    sends = {row["custom_id"]: row["repair_sends"] for row in joined}
    assert {sends[f"r-{i}"] for i in range(1, 16, 4)} == {2}
    assert {0, 1} <= set(sends.values())
    for records, as_text in (
        (joined, False),
        (joined_csv, True),
        (flat, False),
        (flat_table, False),
    ):
        check_rows_add_up(client, batch.id, records, text=as_text)
    for record in joined:
        row = rows[record["custom_id"]]
        # Each row took as many repair sends as it has turns (each was answered), and its
        # tokens are its result's plus its turns'.
        assert record["repair_sends"] == row["repairs"] == len(row["turns"])
        for name in TOKENS:
            paid = [getattr(row["result"], name)] + [getattr(turn, name) for turn in row["turns"]]
            assert record[name] == sum(paid)
    assert [r["cost_usd"] for r in flat] == [r["cost_usd"] for r in joined]
    assert [r["repair_sends"] for r in flat] == [r["repair_sends"] for r in joined]

    # /metrics counts the repaired answers too: its tokens and cost are the status's, and it
    # counts each request once.
    status = client.status(batch.id)
    snapshot = MetricsGatherer(store, prices=client.prices()).gather(now_unix_s=0.0)
    (model,) = snapshot.models
    assert model.cost_usd == pytest.approx(status.cost_usd, rel=1e-9)
    for name in TOKENS:
        assert getattr(model.tokens, name) == getattr(status.usage, name)
    assert sum(item.count for item in snapshot.requests) == len(texts)
    assert {item.state for item in snapshot.requests} == {"succeeded", "errored"}


def test_in_the_batch_lane_a_row_pays_its_broken_answer_at_the_discount_and_its_repair_in_full(
    client: batchrun.Client, store: Store, tmp_path: Path
) -> None:
    texts = [f"{BROKEN} printer {i}" if i % 2 else f"refund {i}" for i in range(6)]
    simulator = create_app(SimulatorConfig(batch_processing_s=0.3))
    with running_simulator(app=simulator) as url:
        (tmp_path / "batchrun.toml").write_text(gateway("sim", url, batch_api="anthropic"))
        batch = client.submit_table(
            table(tmp_path, texts), template=TEMPLATE, endpoint="sim", lane="batch", repair=1
        )
        client.run(batch.id, poll_interval_s=0.2, stop_on_signals=False)

    joined = client.results_table(batch.id).to_pylist()
    check_rows_add_up(client, batch.id, joined)
    rows = stored(store, batch.id)
    price = client.prices().price_for(TEMPLATE["model"])  # type: ignore[arg-type]
    assert price is not None

    def cost(answer: Any) -> float:
        return price.cost_usd(**{name: getattr(answer, name) or 0 for name in TOKENS})

    for record in joined:
        row = rows[record["custom_id"]]
        result, turns = row["result"], row["turns"]
        # The input column "text" keeps its name; the answer's text is "_text".
        if BROKEN not in record["text"]:
            assert (record["repair_sends"], turns, result.lane) == (0, [], "batch")
            assert record["cost_usd"] == pytest.approx(cost(result) * 0.5)
            continue
        (turn,) = turns
        assert (turn.lane, turn.cost_factor) == ("batch", 0.5)
        assert (result.lane or "realtime", result.cost_factor or 1.0) == ("realtime", 1.0)
        assert record["repair_sends"] == 1
        assert record["cost_usd"] == pytest.approx(cost(turn) * 0.5 + cost(result))
        assert record["input_tokens"] == turn.input_tokens + result.input_tokens
