"""Repairs in the batch lane: a provider batch's answers that do not match their schema are
repaired in real time (the follow-up is a Messages API send at the full price; the broken
answer keeps its batch price), against the simulator's Message Batches API on a socket, on
SQLite and Postgres; and `submit --template` with a template's ``repair`` and ``--repair``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import batchrun
from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from batchrun.store import tables as t
from batchrun.store.store import Store
from batchrun.structured.repair import INVALID_OUTPUT_ERROR_TYPE
from tests.cli.test_run_endpoints import gateway

BROKEN = "[[sim:invalid_output=1]]"
TEMPLATE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 200,
    "user": "Triage: {{ text }}",
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


def tickets(tmp_path: Path, texts: list[str]) -> Path:
    path = tmp_path / "tickets.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def results(store: Store, batch_id: str) -> dict[str, Any]:
    r, q = t.results.c, t.requests.c
    with store.engine.connect() as conn:
        return {
            row.custom_id: row
            for row in conn.execute(
                select(r, q.repairs.label("repairs"))
                .join(t.requests, q.id == r.request_id)
                .where(r.batch_id == batch_id)
            )
        }


def test_broken_answers_of_a_provider_batch_are_repaired_in_real_time(
    client: batchrun.Client, tmp_path: Path, store: Store
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.3))
    texts = [f"{BROKEN} printer {i}" if i % 2 else f"refund {i}" for i in range(6)]
    with running_simulator(app=simulator) as url:
        (tmp_path / "batchrun.toml").write_text(gateway("sim", url, batch_api="anthropic"))
        batch = client.submit_table(
            tickets(tmp_path, texts), template=TEMPLATE, endpoint="sim", lane="batch", repair=1
        )
        client.run(batch.id, poll_interval_s=0.2, stop_on_signals=False)

    found = results(store, batch.id)
    # The broken rows' directive holds for their repair too: each ends invalid_output after
    # its batch answer and one real-time repair.
    assert simulator.stats.batch_requests_received == 6
    assert simulator.stats.received == 3, "one real-time repair per broken answer"
    for custom_id, row in found.items():
        broken = BROKEN in texts[int(custom_id) - 1]
        if not broken:
            assert (row.result_type, row.lane, row.repairs) == ("succeeded", "batch", 0)
            continue
        assert row.result_type == "errored" and row.error_type == INVALID_OUTPUT_ERROR_TYPE
        assert (row.lane or "realtime", row.repairs, row.attempts) == ("realtime", 1, 2)
    with store.engine.connect() as conn:
        a = t.answer_turns.c
        turns = conn.execute(select(a.lane, a.cost_factor, a.repair_send, a.input_tokens)).all()
    assert sorted(turn[:3] for turn in turns) == [("batch", 0.5, 0)] * 3
    assert simulator.stats.billed_total == 9 and simulator.stats.paid_twice == 0
    stats = store.batches.stats(batch.id)
    (repairs,) = stats.repairs
    assert (repairs.requests, repairs.lane, repairs.cost_factor) == (3, "realtime", 1.0)
    by_lane = {(m.lane, m.cost_factor): m for m in stats.usage}
    # The broken answers count at the batch price, their repairs at the full one.
    assert by_lane[("batch", 0.5)].input_tokens == sum(turn.input_tokens for turn in turns) + sum(
        row.input_tokens for row in found.values() if row.lane == "batch"
    )
    assert by_lane[("realtime", 1.0)].input_tokens == simulator.stats.input_tokens_total
    assert repairs.input_tokens == simulator.stats.input_tokens_total
    assert "Repairs of answers that did not match their schema: 3 sent" in client.report_html(
        batch.id
    )
    shown = client.status(batch.id)
    assert shown.request_counts.errored == 3 and shown.request_counts.succeeded == 3


def test_the_template_repair_key_and_the_submit_option_set_the_batch_limit(
    client: batchrun.Client, tmp_path: Path, store: Store
) -> None:
    path = tickets(tmp_path, ["a"])
    default = client.submit_table(path, template=TEMPLATE, endpoint="simulator")
    from_template = client.submit_table(
        path, template={**TEMPLATE, "repair": 3}, endpoint="simulator"
    )
    overridden = client.submit_table(
        path, template={**TEMPLATE, "repair": 3}, endpoint="simulator", repair=0
    )

    limits = store.repairs.repair_limits([default.id, from_template.id, overridden.id])
    assert limits == {default.id: 1, from_template.id: 3, overridden.id: 0}
    with pytest.raises(batchrun.ConfigError, match="repair must be a whole number"):
        client.submit_table(path, template={**TEMPLATE, "repair": -1}, endpoint="simulator")
    with pytest.raises(batchrun.ConfigError, match="repair must be a whole number"):
        client.submit_table(path, template=TEMPLATE, endpoint="simulator", repair=-2)
