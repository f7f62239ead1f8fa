"""``submit --reuse`` and prompt-cache groups through the CLI: a resubmitted file is answered
from the database (nothing sent, cost 0), duplicates are sent once, and status and the flat
export say so."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from batchrun.cli.app import app
from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from batchrun.simulator.app import SimulatorApp
from tests.conftest import cli_env, jsonl, request_line

API_KEY = "sk-ant-test-reuse"


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


@pytest.fixture
def simulator() -> Iterator[tuple[SimulatorApp, str]]:
    """The simulator on a socket, with its stats at hand; runs use the anthropic endpoint."""
    sim = create_app(SimulatorConfig(latency_s=0.05))
    with running_simulator(app=sim) as url:
        yield sim, url


def invoke(cli: CliRunner, *args: str, url: str | None = None) -> Result:
    env = None if url is None else {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": API_KEY}
    result = cli.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def submit(cli: CliRunner, path: Path, *extra: str) -> str:
    return invoke(cli, "submit", str(path), "--endpoint", "anthropic", *extra).stdout.strip()


def status(cli: CliRunner, batch_id: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(invoke(cli, "status", batch_id, "--json").stdout)
    return parsed


def flat(cli: CliRunner, batch_id: str) -> list[dict[str, Any]]:
    lines = invoke(cli, "results", batch_id, "--format", "flat").stdout.splitlines()
    return [json.loads(line) for line in lines]


def test_a_file_resubmitted_with_reuse_is_answered_from_the_database(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([request_line(f"r{i}", f"question {i}") for i in range(4)]))
    first = submit(cli, path)
    invoke(cli, "run", first, url=url)
    assert sim.stats.received == 4

    second = submit(cli, path, "--reuse")
    before_run = status(cli, second)
    invoke(cli, "run", second, url=url)

    assert sim.stats.received == 4
    assert before_run["processing_status"] == "ended"
    assert before_run["request_counts"]["succeeded"] == 4
    assert before_run["reused"] == 4
    assert before_run["cost_usd"] == 0
    # Nothing was sent: no endpoint answered this batch.
    assert before_run["endpoints"] == []
    assert status(cli, first)["cost_usd"] > 0
    anthropic = [invoke(cli, "results", b).stdout for b in (first, second)]
    assert anthropic[0] == anthropic[1]
    rows = flat(cli, second)
    assert [row["reused"] for row in rows] == [True] * 4
    assert {row["reused_from"] for row in rows} == {first}
    assert [row["cost_usd"] for row in rows] == [0.0] * 4
    assert [row["attempts"] for row in rows] == [0] * 4
    original = flat(cli, first)
    assert [(row["reused"], row["reused_from"]) for row in original] == [(False, None)] * 4
    assert [row["text"] for row in rows] == [row["text"] for row in original]
    human = invoke(cli, "status", second).stdout
    assert any(line.split() == ["reused", "4"] for line in human.splitlines())


def test_duplicate_params_in_a_file_are_sent_once(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    lines = [
        request_line("a", "same question"),
        request_line("b", "another question"),
        request_line("c", "same question"),
        request_line("d", "same question"),
    ]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines))

    batch_id = submit(cli, path, "--reuse")
    invoke(cli, "run", batch_id, url=url)

    assert sim.stats.received == 2
    found = status(cli, batch_id)
    assert found["request_counts"]["succeeded"] == 4
    assert found["reused"] == 2
    results = [json.loads(line) for line in invoke(cli, "results", batch_id).stdout.splitlines()]
    messages = {item["custom_id"]: item["result"]["message"] for item in results}
    assert messages["c"] == messages["a"] == messages["d"]
    rows = {row["custom_id"]: row for row in flat(cli, batch_id)}
    assert [rows[c]["reused"] for c in "abcd"] == [False, False, True, True]
    assert rows["c"]["reused_from"] == batch_id


def test_without_reuse_a_resubmitted_file_is_sent_again(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([request_line("a", "same"), request_line("b", "same")]))
    invoke(cli, "run", submit(cli, path), url=url)

    second = submit(cli, path)
    invoke(cli, "run", second, url=url)

    assert sim.stats.received == 4
    assert status(cli, second)["reused"] == 0


def test_status_and_exports_show_the_cache_hit_rate(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    system = [
        {
            "type": "text",
            "text": "Shared handbook. " * 600,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    lines = [request_line(f"r{i}", f"question {i}", system=system) for i in range(4)]
    lines.append(request_line("plain", "no cache"))
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines))
    batch_id = submit(cli, path)

    invoke(cli, "run", batch_id, url=url)

    found = status(cli, batch_id)
    usage = found["usage"]
    reads, writes = usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]
    assert reads == 3 * writes > 0
    assert found["cache_hit_rate"] == 0.75
    human = invoke(cli, "status", batch_id).stdout
    assert any(line.split() == ["cache", "hit", "rate", "75.0%"] for line in human.splitlines())
    rates = {row["custom_id"]: row["cache_hit_rate"] for row in flat(cli, batch_id)}
    assert rates == {"r0": 0.0, "r1": 1.0, "r2": 1.0, "r3": 1.0, "plain": None}
    table = invoke(cli, "results", batch_id, "--format", "csv").stdout
    header = next(csv.reader(io.StringIO(table)))
    assert header[-4:] == ["reused", "reused_from", "cache_hit_rate", "cache_saved_usd"]
    assert sim.stats.received == 5
