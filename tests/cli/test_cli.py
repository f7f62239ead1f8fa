"""The CLI through typer's CliRunner: submit → run → status → cancel → results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from typer.testing import CliRunner, Result

from batchrun.cli.app import app
from batchrun.simulator import SimulatorConfig, running_simulator
from batchrun.store.database import head_revision
from tests.conftest import cli_env, jsonl, request_line

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "requests.jsonl"


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    # No config file of the machine running the tests may be found.
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def invoke(cli: CliRunner, *args: str, input: bytes | None = None, **env: str) -> Result:
    return cli.invoke(app, list(args), input=input, env=env or None)


def submit_file(cli: CliRunner, path: Path, *extra: str) -> str:
    result = invoke(cli, "submit", str(path), "--endpoint", "simulator", *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def write(tmp_path: Path, lines: list[dict[str, object]]) -> Path:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines))
    return path


def test_submit_prints_only_the_batch_id_on_stdout(cli: CliRunner) -> None:
    result = invoke(cli, "submit", str(SAMPLES), "--endpoint", "simulator", "--name", "demo")

    assert result.exit_code == 0
    assert result.stdout.startswith("msgbatch_")
    assert result.stdout.count("\n") == 1
    assert "stored 6 requests" in result.stderr


def test_submit_json_prints_a_batch_object_the_sdk_parses(cli: CliRunner) -> None:
    result = invoke(cli, "submit", str(SAMPLES), "--endpoint", "simulator", "--json")

    batch = json.loads(result.stdout)
    parsed = MessageBatch.model_validate(batch)
    assert parsed.processing_status == "in_progress"
    assert parsed.request_counts.processing == 6
    assert batch["endpoint"] == "simulator"


def test_submit_reads_standard_input(cli: CliRunner) -> None:
    result = invoke(cli, "submit", "-", "--endpoint", "simulator", input=jsonl([request_line("a")]))

    assert result.exit_code == 0, result.output
    status = json.loads(invoke(cli, "status", result.stdout.strip(), "--json").stdout)
    assert status["request_counts"]["processing"] == 1


def test_an_invalid_file_is_refused_whole_with_file_and_line(
    cli: CliRunner, tmp_path: Path
) -> None:
    lines = [request_line("a"), request_line("b c"), request_line("d", max_tokens=0)]
    path = write(tmp_path, lines)

    result = invoke(cli, "submit", str(path), "--endpoint", "simulator")

    assert result.exit_code == 1
    assert f"{path}:2: " in result.stderr
    assert f"{path}:3: " in result.stderr
    assert "nothing was stored" in result.stderr
    assert "Traceback" not in result.output
    assert invoke(cli, "list", "--json").stdout.strip() == '{\n  "data": []\n}'


def test_a_missing_file_is_one_clear_line(cli: CliRunner, tmp_path: Path) -> None:
    result = invoke(cli, "submit", str(tmp_path / "nope.jsonl"))

    assert result.exit_code == 1
    assert (
        result.stderr.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such file; check the path"
    )


def test_run_then_status_then_results_end_to_end(cli: CliRunner) -> None:
    batch_id = submit_file(cli, SAMPLES)

    run = invoke(cli, "run", batch_id)
    assert run.exit_code == 0, run.output
    assert "6 succeeded" in run.stderr

    status = json.loads(invoke(cli, "status", batch_id, "--json").stdout)
    assert status["processing_status"] == "ended"
    assert status["request_counts"] == {
        "processing": 0,
        "succeeded": 6,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert status["usage"]["input_tokens"] > 0
    assert status["ended_at"] is not None
    MessageBatch.model_validate(status)

    results = invoke(cli, "results", batch_id)
    lines = results.stdout.splitlines()
    parsed = [MessageBatchIndividualResponse.model_validate_json(line) for line in lines]
    assert [item.custom_id for item in parsed] == [
        "summary-001",
        "multi-turn-002",
        "prefill-003",
        "tool-004",
        "image-005",
        "long-answer-006",
    ]
    assert all(item.result.type == "succeeded" for item in parsed)
    tool = parsed[3].result
    assert tool.type == "succeeded"
    assert tool.message.stop_reason == "tool_use"


def test_the_human_status_is_a_readable_table(cli: CliRunner) -> None:
    batch_id = submit_file(cli, SAMPLES, "--name", "nightly")

    result = invoke(cli, "status", batch_id)

    assert result.exit_code == 0
    for expected in (batch_id, "nightly", "in_progress", "processing", "6"):
        assert expected in result.stdout


def test_run_without_ids_runs_every_batch_with_work_and_list_is_newest_first(
    cli: CliRunner,
) -> None:
    first = submit_file(cli, SAMPLES)
    second = submit_file(cli, SAMPLES)

    assert invoke(cli, "run").exit_code == 0

    listed = json.loads(invoke(cli, "list", "--json").stdout)["data"]
    assert [batch["id"] for batch in listed] == [second, first]
    assert {batch["processing_status"] for batch in listed} == {"ended"}
    assert "no batch has queued requests" in invoke(cli, "run").stderr


def test_errored_and_canceled_results_parse_with_the_sdk(cli: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, [request_line("ok"), request_line("bad", "[[sim:status=400]] x")])
    batch_id = submit_file(cli, path)
    run = invoke(cli, "run", batch_id)
    assert run.exit_code == 3, run.output
    canceled_id = submit_file(cli, write(tmp_path, [request_line("never")]))
    assert invoke(cli, "cancel", canceled_id).exit_code == 0

    exported = invoke(cli, "results", batch_id).stdout + invoke(cli, "results", canceled_id).stdout

    parsed = [
        MessageBatchIndividualResponse.model_validate_json(line) for line in exported.splitlines()
    ]
    assert [item.result.type for item in parsed] == ["succeeded", "errored", "canceled"]
    errored = parsed[1].result
    assert errored.type == "errored"
    assert errored.error.error.type == "invalid_request_error"


def test_cancel_moves_the_batch_to_ended_when_nothing_is_in_flight(cli: CliRunner) -> None:
    batch_id = submit_file(cli, SAMPLES)

    result = invoke(cli, "cancel", batch_id, "--json")

    batch = json.loads(result.stdout)
    assert batch["processing_status"] == "ended"
    assert batch["cancel_initiated_at"] is not None
    assert batch["request_counts"]["canceled"] == 6
    assert "nothing to run" in invoke(cli, "run", batch_id).stderr


def test_results_of_a_running_batch_need_partial(cli: CliRunner) -> None:
    batch_id = submit_file(cli, SAMPLES)

    refused = invoke(cli, "results", batch_id)
    partial = invoke(cli, "results", batch_id, "--partial")

    assert refused.exit_code == 1
    assert "has not ended" in refused.stderr
    assert partial.exit_code == 0
    assert partial.stdout == ""


def test_results_to_a_file_replace_it_whole(cli: CliRunner, tmp_path: Path) -> None:
    batch_id = submit_file(cli, SAMPLES)
    invoke(cli, "run", batch_id)
    target = tmp_path / "out.jsonl"
    target.write_text("old contents\n")

    result = invoke(cli, "results", batch_id, "-o", str(target))

    assert result.exit_code == 0
    assert len(target.read_text().splitlines()) == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.jsonl")] == []


def test_unknown_batch_ids_are_one_clear_line(cli: CliRunner) -> None:
    for command in ("status", "cancel", "results", "run"):
        result = invoke(cli, command, "msgbatch_missing")
        assert result.exit_code == 1, command
        assert "no batch 'msgbatch_missing'" in result.stderr
        assert "Traceback" not in result.output


def test_a_missing_api_key_names_the_variable(cli: CliRunner) -> None:
    result = invoke(cli, "submit", str(SAMPLES))
    batch_id = result.stdout.strip()

    run = invoke(cli, "run", batch_id)

    # The batch waits (nothing sent, still queued), named with the variable: exit 4.
    assert run.exit_code == 4
    assert f"{batch_id} paused: ANTHROPIC_API_KEY is not set" in run.stderr


def test_the_anthropic_endpoint_sends_the_key_and_version_headers(cli: CliRunner) -> None:
    batch_id = invoke(cli, "submit", str(SAMPLES)).stdout.strip()
    config = SimulatorConfig(required_api_key="sk-ant-test-1234")

    with running_simulator(config) as url:
        wrong = invoke(cli, "run", batch_id, ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-wrong")
        right = invoke(
            cli, "run", batch_id, ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-ant-test-1234"
        )

    assert wrong.exit_code == 4, wrong.output
    assert "authentication failed for endpoint anthropic: check ANTHROPIC_API_KEY" in wrong.stderr
    assert "sk-wrong" not in wrong.output
    assert right.exit_code == 0, right.output
    status = json.loads(invoke(cli, "status", batch_id, "--json").stdout)
    assert status["request_counts"]["succeeded"] == 6
    assert status["paused_reason"] is None


@pytest.mark.empty_database
def test_db_upgrade_reports_the_schema(cli: CliRunner) -> None:
    first = invoke(cli, "db", "upgrade")
    second = invoke(cli, "db", "upgrade")

    assert first.exit_code == 0
    assert "migrated from empty" in first.stderr
    assert "up to date" in second.stderr
    assert invoke(cli, "db", "current").stdout.strip() == head_revision()


def test_unknown_endpoint_is_refused_at_submit(cli: CliRunner) -> None:
    result = invoke(cli, "submit", str(SAMPLES), "--endpoint", "nowhere")

    assert result.exit_code == 1
    assert "unknown endpoint 'nowhere'" in result.stderr
