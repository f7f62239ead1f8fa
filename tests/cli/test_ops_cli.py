"""Operability through the CLI (typer's CliRunner): estimate, budgets, time limits, progress
output, status with cost, and the analytics exports."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner, Result

import batchrun
from batchrun.cli.app import app
from batchrun.export.flat import COLUMNS
from tests.conftest import cli_env, jsonl, request_line

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "requests.jsonl"
HAIKU = "claude-3-haiku-20240307"


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    # No config file of the machine running the tests may be found.
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def invoke(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(app, list(args))


def write(tmp_path: Path, lines: list[dict[str, object]], name: str = "requests.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(jsonl(lines))
    return path


def submit(cli: CliRunner, path: Path, *extra: str) -> str:
    result = invoke(cli, "submit", str(path), "--endpoint", "simulator", *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def status_json(cli: CliRunner, batch_id: str) -> dict[str, object]:
    result = invoke(cli, "status", batch_id, "--json")
    assert result.exit_code == 0, result.output
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


# -- estimate ---------------------------------------------------------------------------------


def haiku_file(tmp_path: Path) -> Path:
    # 350 characters = 100 tokens at 3.5 characters per token, + 3 for the message.
    return write(
        tmp_path,
        [request_line(f"q{i}", "x" * 350, model=HAIKU, max_tokens=1000) for i in range(3)],
    )


def test_estimate_reports_tokens_cost_and_the_binding_limit(cli: CliRunner, tmp_path: Path) -> None:
    path = haiku_file(tmp_path)

    result = invoke(cli, "estimate", str(path), "--endpoint", "langdock-eu", "--json")

    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["requests"] == 3
    assert plan["input_tokens"] == 3 * 103
    assert plan["max_output_tokens"] == 3000
    assert plan["expected_output_tokens"] == 900
    assert plan["expected_cost_usd"] == pytest.approx((309 * 0.25 + 900 * 1.25) / 1e6)
    assert plan["worst_cost_usd"] == pytest.approx((309 * 0.25 + 3000 * 1.25) / 1e6)
    (model,) = plan["models"]
    # Langdock: 500 RPM and 60,000 TPM; the tokens take longer than the requests.
    assert model["expected_duration"]["binding_limit"] == "tpm"
    assert model["expected_duration"]["minutes"] == pytest.approx((309 + 900) / 60_000, abs=1e-3)
    assert model["expected_duration"]["minutes_by_limit"]["rpm"] == pytest.approx(3 / 500, abs=1e-3)
    assert model["worst_duration"]["minutes"] == pytest.approx(3309 / 60_000, abs=1e-3)
    assert invoke(cli, "list", "--json").stdout.strip() == '{\n  "data": []\n}'


def test_estimate_flags_change_the_limits_and_the_output_assumption(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = haiku_file(tmp_path)

    result = invoke(
        cli,
        "estimate",
        str(path),
        "--endpoint",
        "langdock-eu",
        "--rpm",
        "2",
        "--output-share",
        "0.5",
        "--json",
    )

    plan = json.loads(result.stdout)
    assert plan["expected_output_tokens"] == 1500
    assert plan["models"][0]["expected_duration"]["binding_limit"] == "rpm"
    assert plan["duration"]["expected"]["minutes"] == pytest.approx(1.5)


def test_estimate_for_people_names_the_limit_and_stores_nothing(
    cli: CliRunner, tmp_path: Path
) -> None:
    result = invoke(cli, "estimate", str(haiku_file(tmp_path)), "--endpoint", "langdock-eu")

    assert result.exit_code == 0, result.output
    assert "bound by tpm 60,000/min" in result.stdout
    assert "nothing was stored or sent" in result.stderr


def test_an_unknown_model_makes_the_estimate_unknown_not_zero(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = write(tmp_path, [request_line("a", model=HAIKU), request_line("b", model="my-finetune")])

    plan = json.loads(invoke(cli, "estimate", str(path), "--json").stdout)
    people = invoke(cli, "estimate", str(path)).stdout

    assert plan["expected_cost_usd"] is None
    assert plan["unpriced_models"] == ["my-finetune"]
    assert "+ unknown expected" in people
    assert 'my-finetune: add [prices."my-finetune"] to the config file' in people
    # The anthropic endpoint has no limits of its own: no duration can be promised.
    assert plan["duration"]["expected"]["minutes"] is None


def test_submit_dry_run_estimates_and_stores_nothing(cli: CliRunner, tmp_path: Path) -> None:
    result = invoke(cli, "submit", str(haiku_file(tmp_path)), "--dry-run", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["requests"] == 3
    assert json.loads(invoke(cli, "list", "--json").stdout)["data"] == []


def test_an_invalid_file_is_not_estimated(cli: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, [request_line("a"), request_line("b c")])

    result = invoke(cli, "estimate", str(path))

    assert result.exit_code == 1
    assert f"{path}:2: " in result.stderr
    assert "nothing was estimated" in result.stderr


# -- run: output, budgets, time limits ---------------------------------------------------


def test_run_json_prints_one_summary_object(cli: CliRunner) -> None:
    batch_id = submit(cli, SAMPLES)

    result = invoke(cli, "run", batch_id, "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 0
    assert summary["run"]["succeeded"] == 6
    assert summary["run"]["cost_usd"] > 0
    assert summary["run"]["output_tokens"] > 0
    (batch,) = summary["batches"]
    assert batch["id"] == batch_id
    assert batch["processing_status"] == "ended"
    assert batch["cost_usd"] == pytest.approx(summary["run"]["cost_usd"])
    assert summary["paused"] == {} and summary["stopped_by_time_limit"] is False


def test_without_a_terminal_run_logs_plain_progress_lines(cli: CliRunner, tmp_path: Path) -> None:
    lines = [request_line(f"r{i}", "[[sim:latency=1.2]] hi") for i in range(3)]
    batch_id = submit(cli, write(tmp_path, lines))

    result = invoke(cli, "run", batch_id, "--progress-interval", "0.4")

    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if " progress: " in line]
    # At least two periodic lines during the 1.2 s, and one at the end.
    assert len(progress) >= 3
    assert progress[-1].endswith("cost $0.0020") or "3/3 done" in progress[-1]
    assert "\x1b[" not in result.stderr
    assert "cost of this run: $" in result.stderr


def test_quiet_prints_nothing_on_success(cli: CliRunner) -> None:
    batch_id = submit(cli, SAMPLES)

    result = invoke(cli, "run", batch_id, "--quiet")

    assert result.exit_code == 0
    assert result.stderr == "" and result.stdout == ""


def budget_file(tmp_path: Path) -> Path:
    return write(
        tmp_path, [request_line(f"r{i:02d}", model=HAIKU, max_tokens=1000) for i in range(40)]
    )


def test_a_budget_pauses_the_batch_and_a_higher_one_resumes_it(
    cli: CliRunner, tmp_path: Path
) -> None:
    batch_id = submit(cli, budget_file(tmp_path), "--max-cost", "0.003")
    assert status_json(cli, batch_id)["max_cost_usd"] == 0.003

    paused = invoke(cli, "run", batch_id, "--max-concurrency", "1")
    again = invoke(cli, "run", batch_id)

    assert paused.exit_code == 4, paused.output
    assert "max-cost $0.0030 reached" in paused.stderr
    assert f"batchrun run {batch_id} --max-cost USD" in paused.stderr
    state = status_json(cli, batch_id)
    counts = state["request_counts"]
    assert isinstance(counts, dict)
    assert 0 < counts["succeeded"] < 40
    assert counts["processing"] == 40 - counts["succeeded"]
    assert isinstance(state["cost_usd"], float) and state["cost_usd"] <= 0.003
    assert "max-cost" in str(state["paused_reason"])
    # Still over budget: the next run pauses again without sending.
    assert again.exit_code == 4
    assert status_json(cli, batch_id)["request_counts"] == counts

    resumed = invoke(cli, "run", batch_id, "--max-cost", "1")

    assert resumed.exit_code == 0, resumed.output
    final = status_json(cli, batch_id)
    assert final["processing_status"] == "ended"
    assert final["max_cost_usd"] == 1.0
    assert final["paused_reason"] is None


def test_max_runtime_stops_cleanly_with_its_own_exit_code_and_resumes(
    cli: CliRunner, tmp_path: Path
) -> None:
    batch_id = submit(cli, write(tmp_path, [request_line(f"r{i}") for i in range(20)]))

    stopped = invoke(cli, "run", batch_id, "--rpm", "120", "--max-runtime", "1.5s")

    assert stopped.exit_code == 5, stopped.output
    assert "stopped at the time limit" in stopped.stderr
    state = status_json(cli, batch_id)
    counts = state["request_counts"]
    assert isinstance(counts, dict)
    assert 1 <= counts["succeeded"] <= 6
    assert state["paused_reason"] is None
    assert invoke(cli, "run", batch_id).exit_code == 0
    assert status_json(cli, batch_id)["processing_status"] == "ended"


@pytest.mark.parametrize("value", ["5x", "m", "1h-2m"])
def test_a_bad_duration_is_a_usage_error(cli: CliRunner, value: str) -> None:
    result = invoke(cli, "run", "--max-runtime", value)

    assert result.exit_code == 2
    assert "is not a positive duration" in re.sub(r"[│\s]+", " ", result.output)


def test_forever_takes_no_batch_ids(cli: CliRunner) -> None:
    assert invoke(cli, "run", "msgbatch_x", "--forever").exit_code == 2


# -- status ------------------------------------------------------------------------------


def test_status_shows_cost_timings_throughput_and_frequent_errors(
    cli: CliRunner, tmp_path: Path
) -> None:
    # Long enough for a throughput figure (at least a second from first send to last answer).
    lines = [request_line(f"ok{i}", "[[sim:latency=1.1]] hi") for i in range(2)]
    lines += [request_line(f"bad{i}", "[[sim:status=400]] no") for i in range(3)]
    lines.append(request_line("gone", "[[sim:status=404]] no"))
    batch_id = submit(cli, write(tmp_path, lines))
    assert invoke(cli, "run", batch_id).exit_code == 3

    people = invoke(cli, "status", batch_id)
    data = status_json(cli, batch_id)

    assert people.exit_code == 0
    for expected in ("cost", "$0.00", "first sent", "last result", "throughput", "errors"):
        assert expected in people.stdout
    assert "3 × invalid_request_error" in people.stdout
    assert "1 × not_found_error" in people.stdout
    assert data["errors"] == [
        {"type": "invalid_request_error", "count": 3, "example": "Invalid request (simulated)."},
        {"type": "not_found_error", "count": 1, "example": "Not found"},
    ]
    assert isinstance(data["cost_usd"], float) and data["cost_usd"] > 0
    assert data["started_at"] is not None and data["last_completed_at"] is not None
    throughput = data["throughput"]
    assert isinstance(throughput, dict) and throughput["requests_per_min"] > 0


def test_status_watch_of_an_ended_batch_prints_once(cli: CliRunner) -> None:
    batch_id = submit(cli, SAMPLES)
    invoke(cli, "run", batch_id)

    result = invoke(cli, "status", batch_id, "--watch", "--interval", "0.1")

    assert result.exit_code == 0
    assert result.stdout.count("ended") >= 1 and "cost" in result.stdout


def test_an_unknown_model_costs_unknown_until_the_config_file_prices_it(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = write(tmp_path, [request_line("a", model="my-finetune")])
    batch_id = submit(cli, path)
    assert invoke(cli, "run", batch_id).exit_code == 0
    usage = status_json(cli, batch_id)["usage"]
    assert isinstance(usage, dict)

    unknown = status_json(cli, batch_id)
    people = invoke(cli, "status", batch_id).stdout
    flat = json.loads(invoke(cli, "results", batch_id, "--format", "flat").stdout)
    (tmp_path / "batchrun.toml").write_text('[prices."my-finetune"]\ninput = 1\noutput = 2\n')
    priced = status_json(cli, batch_id)

    assert unknown["cost_usd"] is None
    assert unknown["unpriced_models"] == ["my-finetune"]
    assert "unknown (no price for my-finetune" in people
    assert flat["cost_usd"] is None
    expected = (usage["input_tokens"] * 1 + usage["output_tokens"] * 2) / 1e6
    assert priced["cost_usd"] == pytest.approx(expected)


# -- results -----------------------------------------------------------------------------


def test_flat_export_has_one_record_per_request_with_every_column(cli: CliRunner) -> None:
    batch_id = submit(cli, SAMPLES)
    invoke(cli, "run", batch_id)

    result = invoke(cli, "results", batch_id, "--format", "flat")

    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [tuple(r) for r in records] == [COLUMNS] * 6
    first = records[0]
    assert first["batch_id"] == batch_id
    assert (first["custom_id"], first["line"], first["status"]) == ("summary-001", 1, "succeeded")
    assert first["model"] == "claude-sonnet-4-5"
    assert first["text"].startswith("Simulated reply")
    expected = (first["input_tokens"] * 3 + first["output_tokens"] * 15) / 1e6
    assert first["cost_usd"] == pytest.approx(expected)
    assert first["attempts"] == 1 and first["latency_ms"] >= 0
    assert first["created_at"].endswith("Z") and first["completed_at"].endswith("Z")
    tool = records[3]
    assert tool["stop_reason"] == "tool_use"
    assert tool["tool_use"][0]["name"] == "get_exchange_rate"
    assert set(tool["tool_use"][0]) == {"id", "name", "input"}


def test_csv_export_has_the_same_columns_and_only_filters(cli: CliRunner, tmp_path: Path) -> None:
    lines = [request_line("ok"), request_line("bad", '[[sim:status=400]] x, "quoted"\nline')]
    batch_id = submit(cli, write(tmp_path, lines))
    invoke(cli, "run", batch_id)

    every = invoke(cli, "results", batch_id, "--format", "csv")
    errored = invoke(cli, "results", batch_id, "--format", "csv", "--only", "errored")
    anthropic = invoke(cli, "results", batch_id, "--only", "succeeded")

    rows = list(csv.reader(io.StringIO(every.stdout, newline="")))
    assert tuple(rows[0]) == COLUMNS
    assert [row[1] for row in rows[1:]] == ["ok", "bad"]
    only = list(csv.DictReader(io.StringIO(errored.stdout, newline="")))
    assert [row["custom_id"] for row in only] == ["bad"]
    assert only[0]["error_type"] == "invalid_request_error"
    assert only[0]["cost_usd"] == "" and only[0]["tool_use"] == ""
    # RFC 4180 line ends (CliRunner's stdout normalises them, so look at a file).
    invoke(cli, "results", batch_id, "--format", "csv", "-o", str(tmp_path / "out.csv"))
    raw = (tmp_path / "out.csv").read_bytes()
    assert raw.count(b"\r\n") == 3 and raw.endswith(b"\r\n")
    assert [json.loads(line)["custom_id"] for line in anthropic.stdout.splitlines()] == ["ok"]


def test_a_failed_export_leaves_no_partial_file(
    cli: CliRunner, tmp_path: Path, db_url: str
) -> None:
    batch_id = submit(cli, SAMPLES)
    invoke(cli, "run", batch_id)
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE results SET body = 'not json' WHERE custom_id = 'image-005'")
        )
    engine.dispose()
    target = tmp_path / "out.jsonl"
    target.write_text("the previous export\n")

    result = invoke(cli, "results", batch_id, "--format", "flat", "-o", str(target))

    assert result.exit_code == 1
    assert "image-005" in result.stderr and "not JSON" in result.stderr
    assert target.read_text() == "the previous export\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.jsonl")] == []


def test_flat_export_costs_add_up_to_the_status_cost(cli: CliRunner) -> None:
    batch_id = submit(cli, SAMPLES)
    invoke(cli, "run", batch_id)

    records = [
        json.loads(line)
        for line in invoke(cli, "results", batch_id, "--format", "flat").stdout.splitlines()
    ]

    total = status_json(cli, batch_id)["cost_usd"]
    assert isinstance(total, float)
    assert math.isclose(sum(r["cost_usd"] for r in records), total, rel_tol=1e-6)


# -- limits per model and across the models of an endpoint --------------------------------------


def test_run_help_says_which_scope_each_limit_flag_has(cli: CliRunner) -> None:
    result = cli.invoke(app, ["run", "--help"], env={"COLUMNS": "250", "TERM": "dumb"})

    said = " ".join(result.stdout.replace("│", " ").split())
    assert (
        "--rpm <float range> [x>=0.001] Requests per minute per model (or family), not a " in said
    )
    assert (
        "--endpoint-rpm <float range> [x>=0.001] Requests per minute across all models of " in said
    )
    assert "--endpoint-otpm" in said


def test_run_endpoint_flags_cap_the_models_together(
    cli: CliRunner, tmp_path: Path, db_url: str
) -> None:
    models = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]
    path = write(tmp_path, [request_line(f"r{i}", model=models[i % 3]) for i in range(6)])
    batch_id = submit(cli, path)

    result = invoke(cli, "run", batch_id, "--rpm", "6000", "--endpoint-rpm", "600", "--quiet")

    assert result.exit_code == 0, result.output
    with batchrun.Client(db_url, env={"HOME": str(tmp_path / "home")}, cwd=tmp_path) as client:
        (limit,) = client.report(batch_id).limits
    # Per model 6,000 (18,000 for three), across them 600: the run held the batch to 600.
    assert (limit.dimension, limit.flag, limit.limit) == ("rpm", 600.0, 600.0)
