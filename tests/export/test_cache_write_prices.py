"""A cache write is priced at the price of the cache it went to, from the usage the server
sends (``cache_creation.ephemeral_1h_input_tokens``): the 1-hour part at 2 × input, the rest
at the 5-minute 1.25 × input, in real time and in a provider batch (at its discount). From
the CLI against the simulator on a socket, on SQLite and Postgres: the flat export's rows
add up to the cost ``status`` shows, and the Anthropic export keeps the usage as sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from tests.batch_lane.test_batch_lane_cli import configure, flat, status
from tests.cli.test_run_endpoints import invoke
from tests.conftest import cli_env, jsonl, request_line

MODEL = "claude-sonnet-4-5"
# claude-sonnet-4-5's list prices, USD per million tokens.
INPUT, OUTPUT, WRITE_5M, WRITE_1H, READ = 3.0, 15.0, 3.75, 6.0, 0.3
# 1,400 tokens by the simulator's count: over the model's 1,024-token cache minimum.
SYSTEM = ("You answer questions about the catalogue, briefly. " * 112)[:5600]


@pytest.fixture
def cli(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def marked(custom_id: str, prompt: str, ttl: str | None) -> dict[str, Any]:
    """A request whose system prompt (its own, by ``prompt``) is a cache breakpoint with
    ``ttl`` (None: no ttl, the API's 5 minutes)."""
    control: dict[str, str] = {"type": "ephemeral"}
    if ttl is not None:
        control["ttl"] = ttl
    return request_line(
        custom_id,
        "a question",
        model=MODEL,
        max_tokens=20,
        system=[{"type": "text", "text": f"{prompt} {SYSTEM}", "cache_control": control}],
    )


def submit(cli: CliRunner, tmp_path: Path, lines: list[dict[str, Any]], *args: str) -> str:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines))
    submitted = invoke(cli, "submit", str(path), "--endpoint", "sim", *args)
    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()
    ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
    assert ran.exit_code == 0, ran.output
    return batch_id


def list_cost_usd(record: dict[str, Any], *, write_1h_per_mtok: float) -> float:
    """The record's tokens at the list price, its 1-hour writes at ``write_1h_per_mtok``."""
    one_hour = record["cache_creation_1h_input_tokens"]
    five_minutes = record["cache_creation_input_tokens"] - one_hour
    return (
        record["input_tokens"] * INPUT
        + record["output_tokens"] * OUTPUT
        + five_minutes * WRITE_5M
        + one_hour * write_1h_per_mtok
        + record["cache_read_input_tokens"] * READ
    ) / 1e6


def test_one_hour_cache_writes_cost_twice_the_input_price_and_five_minute_ones_1_25(
    cli: CliRunner, tmp_path: Path
) -> None:
    lines = [
        marked("hour", "Hour.", "1h"),
        marked("five", "Five.", "5m"),
        marked("default", "Default.", None),
    ]
    app = create_app(SimulatorConfig())
    with running_simulator(app=app) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, lines)
        shown = status(cli, batch_id)
        records = {r["custom_id"]: r for r in flat(cli, batch_id)}
        exported = invoke(cli, "results", batch_id).stdout.splitlines()

    hour, five, default = records["hour"], records["five"], records["default"]
    assert hour["cache_creation_input_tokens"] > 1024
    assert hour["cache_creation_1h_input_tokens"] == hour["cache_creation_input_tokens"]
    for record in (five, default):
        assert record["cache_creation_input_tokens"] > 1024
        assert record["cache_creation_1h_input_tokens"] == 0
    # The 1-hour write at 2 × input ($6.00), the others at 1.25 × ($3.75).
    assert hour["cost_usd"] == pytest.approx(list_cost_usd(hour, write_1h_per_mtok=WRITE_1H))
    assert hour["cost_usd"] > list_cost_usd(hour, write_1h_per_mtok=WRITE_5M)
    for record in (five, default):
        assert record["cost_usd"] == pytest.approx(list_cost_usd(record, write_1h_per_mtok=0.0))
    # status's cost (its counters) is the sum of the rows'.
    assert shown["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records.values()))
    # The Anthropic export keeps the usage the server sent, its breakdown included.
    usage = {
        item["custom_id"]: item["result"]["message"]["usage"] for item in map(json.loads, exported)
    }
    assert usage["hour"]["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": hour["cache_creation_input_tokens"],
    }
    assert usage["five"]["cache_creation"]["ephemeral_1h_input_tokens"] == 0


def test_a_provider_batchs_one_hour_cache_writes_are_priced_at_the_one_hour_price(
    cli: CliRunner, tmp_path: Path
) -> None:
    lines = [marked("hour", "Hour.", "1h"), marked("five", "Five.", "5m")]
    app = create_app(SimulatorConfig(batch_processing_s=0.3))
    with running_simulator(app=app) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, lines, "--lane", "batch")
        shown = status(cli, batch_id)
        records = {r["custom_id"]: r for r in flat(cli, batch_id)}

    assert app.stats.received == 0, "both went through the provider batch"
    hour, five = records["hour"], records["five"]
    assert {hour["lane"], five["lane"]} == {"batch"}
    assert hour["cache_creation_1h_input_tokens"] == hour["cache_creation_input_tokens"] > 0
    assert five["cache_creation_1h_input_tokens"] == 0 < five["cache_creation_input_tokens"]
    # At the batch's 50 % of the list price.
    assert hour["cost_usd"] == pytest.approx(0.5 * list_cost_usd(hour, write_1h_per_mtok=WRITE_1H))
    assert five["cost_usd"] == pytest.approx(0.5 * list_cost_usd(five, write_1h_per_mtok=0.0))
    assert shown["cost_usd"] == pytest.approx(hour["cost_usd"] + five["cost_usd"])
