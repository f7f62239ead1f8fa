"""Whole runs against the hostile server, on SQLite and Postgres: a bad answer ends its one
request, the run finishes, and nothing is paid twice."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic.types.messages import MessageBatchIndividualResponse
from sqlalchemy import create_engine, text

import batchrun
from batchrun.cli.progress import progress_line
from batchrun.errors import ExitCode
from batchrun.ops.session import Progress, RunEvent
from tests.conftest import request_line
from tests.hostile import HostileServer, running_hostile_server

KEY = "sk-hostile-RUN-key-5566778899"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with running_hostile_server() as server:
        yield server


@pytest.fixture
def client(db_url: str, tmp_path: Path, hostile: HostileServer) -> Iterator[batchrun.Client]:
    config = tmp_path / "batchrun.toml"
    config.write_text(
        f'[endpoints.hostile]\nbase_url = "{hostile.url}"\nauth = "x-api-key"\n'
        'api_key_env = "HOSTILE_KEY"\ntimeout_s = 5\nmax_attempts = 4\n'
    )
    env = {"HOME": str(tmp_path), "HOSTILE_KEY": KEY}
    with batchrun.Client(db_url, config=config, env=env, cwd=tmp_path) as opened:
        yield opened


def lines(modes: list[str]) -> list[dict[str, Any]]:
    return [request_line(f"r{i}", f"q{i} <<hostile:{mode}>>") for i, mode in enumerate(modes)]


def sends(server: HostileServer) -> Counter[str]:
    """Requests the server received, by custom_id's prompt number."""
    return Counter(json.loads(r.body)["messages"][0]["content"].split()[0] for r in server.log)


def raw_bodies(db_url: str, batch_id: str) -> dict[str, str | None]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT custom_id, raw_body FROM results WHERE batch_id = :b"),
                {"b": batch_id},
            )
            return {row.custom_id: row.raw_body for row in rows}
    finally:
        engine.dispose()


def test_an_openai_shaped_gateway_succeeds_once_per_request(
    client: batchrun.Client, hostile: HostileServer, db_url: str, tmp_path: Path
) -> None:
    batch = client.submit(lines(["openai"] * 50), endpoint="hostile")

    result = client.run(batch.id, stop_on_signals=False)

    assert result.exit_code == ExitCode.OK
    assert len(hostile.log) == 50
    results = list(client.results(batch.id))
    assert {line["result"]["type"] for line in results} == {"succeeded"}
    for line in results:
        MessageBatchIndividualResponse.model_validate(line)
    assert client.status(batch.id).usage.output_tokens == 50 * 4
    raw = raw_bodies(db_url, batch.id)
    assert all(body and json.loads(body)["object"] == "chat.completion" for body in raw.values())
    flat = tmp_path / "flat.jsonl"
    client.export(batch.id, flat, format="flat")
    first = json.loads(flat.read_text().splitlines()[0])
    assert first["text"] == "hi from openai shape"
    assert json.loads(first["raw_body"])["choices"][0]["finish_reason"] == "stop"


def test_one_poisoned_answer_ends_one_request_and_nothing_is_paid_twice(
    client: batchrun.Client, hostile: HostileServer, db_url: str
) -> None:
    modes = ["normal"] * 300
    modes[17], modes[150], modes[201] = "usage_2_63", "deep", "usage_2_31"
    modes[99] = "foreign"
    batch = client.submit(lines(modes), endpoint="hostile")

    result = client.run(batch.id, stop_on_signals=False)

    assert result.exit_code == ExitCode.ERRORED_RESULTS
    status = client.status(batch.id)
    assert (status.request_counts.succeeded, status.request_counts.errored) == (296, 4)
    assert set(sends(hostile).values()) == {1}, "some request was sent twice"
    raw = raw_bodies(db_url, batch.id)
    assert raw["r17"] is not None and str(2**63) in raw["r17"]
    assert raw["r99"] == '{"hello": "world"}'
    # The run can be listed and exported: nothing it stored is out of range.
    assert len(list(client.results(batch.id))) == 300


def test_a_body_that_is_not_json_is_sent_twice_at_most(
    client: batchrun.Client, hostile: HostileServer
) -> None:
    batch = client.submit(lines(["not_json", "normal"]), endpoint="hostile")

    client.run(batch.id, stop_on_signals=False)

    assert sends(hostile) == {"q0": 2, "q1": 1}
    first = next(client.results(batch.id))
    assert first["result"]["error"]["error"]["message"].startswith(
        "gave up after 2 attempts; last failure: malformed response"
    )


def test_negative_usage_never_makes_a_negative_cost(
    client: batchrun.Client, hostile: HostileServer
) -> None:
    batch = client.submit(lines(["negative_usage"] * 3), endpoint="hostile")

    client.run(batch.id, stop_on_signals=False)

    status = client.status(batch.id)
    assert status.usage.output_tokens == 0
    assert status.cost_usd is not None and status.cost_usd >= 0


def test_a_key_a_server_echoes_in_headers_is_nowhere_in_what_is_kept(
    client: batchrun.Client, hostile: HostileServer, db_url: str, tmp_path: Path
) -> None:
    batch = client.submit(lines(["echo_key"] * 3), endpoint="hostile")
    client.run(batch.id, stop_on_signals=False)
    flat = tmp_path / "flat.jsonl"

    client.export(batch.id, flat, format="flat")

    assert KEY not in flat.read_text()
    assert all(
        json.loads(row)["request_id"] == "[redacted]" for row in flat.read_text().splitlines()
    )
    assert KEY not in json.dumps(list(client.results(batch.id)))
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            dumped = [tuple(row) for row in conn.execute(text("SELECT * FROM results"))]
    finally:
        engine.dispose()
    assert KEY not in repr(dumped)


def test_an_absurd_announced_limit_slows_the_run_but_cannot_stall_it(
    client: batchrun.Client, hostile: HostileServer
) -> None:
    # Every answer announces 0.0001 requests a minute; the floor is 1 % of the 60,000
    # configured, so 20 requests take about 2 s instead of 140 days.
    batch = client.submit(lines(["tiny_limit"] * 20), endpoint="hostile")

    result = client.run(batch.id, stop_on_signals=False, limits={"rpm": 60_000}, max_runtime_s=60)

    assert result.exit_code == ExitCode.OK
    assert client.status(batch.id).request_counts.succeeded == 20


def test_a_ten_hour_retry_after_is_kept_and_said_in_progress(
    client: batchrun.Client, hostile: HostileServer
) -> None:
    batch = client.submit(lines(["retry_after_10h", "normal"]), endpoint="hostile")
    events: list[RunEvent] = []

    client.run(
        batch.id,
        stop_on_signals=False,
        max_concurrency=1,
        max_runtime_s=2,
        progress_interval_s=0.2,
        on_event=events.append,
    )

    assert sends(hostile) == {"q0": 1}, "the server asked to wait 10 hours"
    said = [progress_line(event.snapshot) for event in events if isinstance(event, Progress)]
    assert any(
        re.search(r"waiting (10h00m|9h59m) for retry-after from hostile", line) for line in said
    ), said
    assert client.status(batch.id).request_counts.processing == 2
