"""Answers that go wrong, through the real CLI against the simulator on a socket: final
errors, batch-wide halts that pause and then resume, malformed or cut bodies, timeouts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic.types.messages import MessageBatchIndividualResponse
from typer.testing import CliRunner, Result

from batchrun.simulator import SimulatorApp, SimulatorConfig, create_app, running_simulator
from tests.clitools import invoke, runner
from tests.conftest import jsonl, request_line

KEY = "sk-ant-test-failures"


@pytest.fixture
def cli(db_url: str) -> CliRunner:
    return runner(db_url)


@pytest.fixture
def sqlite_cli(sqlite_url: str) -> CliRunner:
    """For failures of the transport alone, where the database backend plays no part."""
    return runner(sqlite_url)


@pytest.fixture
def app() -> SimulatorApp:
    return create_app(SimulatorConfig(required_api_key=KEY))


@pytest.fixture
def url(app: SimulatorApp) -> Iterator[str]:
    with running_simulator(app=app) as base_url:
        yield base_url


def submit(cli: CliRunner, tmp_path: Path, prompts: list[str]) -> str:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([request_line(f"r{i}", text) for i, text in enumerate(prompts)]))
    result = invoke(cli, "submit", str(path))
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def run(cli: CliRunner, url: str, batch_id: str, *args: str, key: str = KEY) -> Result:
    return invoke(cli, "run", batch_id, *args, ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY=key)


def status(cli: CliRunner, batch_id: str) -> dict[str, Any]:
    result = invoke(cli, "status", batch_id, "--json")
    assert result.exit_code == 0, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def results(cli: CliRunner, batch_id: str) -> list[dict[str, Any]]:
    rows = invoke(cli, "results", batch_id).stdout.splitlines()
    for row in rows:
        MessageBatchIndividualResponse.model_validate_json(row)
    return [json.loads(row)["result"] for row in rows]


def test_final_client_errors_end_errored_with_the_api_error_and_are_not_retried(
    cli: CliRunner, tmp_path: Path, app: SimulatorApp, url: str
) -> None:
    statuses = [400, 404, 413, 422]
    batch_id = submit(cli, tmp_path, [f"[[sim:status={code}]] hi" for code in statuses])

    ran = run(cli, url, batch_id)

    assert ran.exit_code == 3, ran.output
    assert app.stats.received == len(statuses)
    errors = [result["error"]["error"] for result in results(cli, batch_id)]
    assert [error["type"] for error in errors] == [
        "invalid_request_error",
        "not_found_error",
        "invalid_request_error",
        "invalid_request_error",
    ]
    assert errors[2]["original_type"] == "request_too_large"
    assert errors[2]["message"] == "Request exceeds the maximum allowed number of bytes."
    assert all(
        result["error"]["request_id"].startswith("req_") for result in results(cli, batch_id)
    )


HALTS = [
    pytest.param(
        "[[sim:status=403:times=1]]",
        "permission denied by endpoint anthropic: check that ANTHROPIC_API_KEY may use it",
        id="403 permission",
    ),
    pytest.param(
        "[[sim:status=402:times=1]]",
        "endpoint anthropic refused the request for billing reasons: Your credit balance is "
        "too low",
        id="402 billing",
    ),
    pytest.param(
        "[[sim:status=429:spend_limit=1:times=1]]",
        "endpoint anthropic reports that the spend limit is reached: This request would "
        "exceed your organization's spend limit",
        id="429 spend limit",
    ),
]


@pytest.mark.parametrize(("directive", "message"), HALTS)
def test_an_account_level_refusal_pauses_the_batch_and_the_next_run_finishes_it(
    cli: CliRunner, tmp_path: Path, app: SimulatorApp, url: str, directive: str, message: str
) -> None:
    # The first request is refused once; the fix is that the endpoint accepts it again.
    batch_id = submit(cli, tmp_path, [f"{directive} first", *(f"q{i}" for i in range(9))])

    paused = run(cli, url, batch_id, "--max-concurrency", "1")

    assert paused.exit_code == 4, paused.output
    assert f"{batch_id} paused: {message}" in paused.stderr
    assert paused.stderr.count(message) == 1
    assert app.stats.received == 1
    after_pause = status(cli, batch_id)
    assert after_pause["paused_reason"].startswith(message)
    assert after_pause["request_counts"]["processing"] == 10
    assert after_pause["request_counts"]["errored"] == 0
    assert "(paused: " in invoke(cli, "status", batch_id).stdout

    resumed = run(cli, url, batch_id)

    assert resumed.exit_code == 0, resumed.output
    done = status(cli, batch_id)
    assert done["processing_status"] == "ended"
    assert done["request_counts"]["succeeded"] == 10
    assert done["paused_reason"] is None
    assert app.stats.duplicate_receptions == 1


def test_a_refused_key_never_turns_the_batch_into_errored_results(
    cli: CliRunner, tmp_path: Path, app: SimulatorApp, url: str
) -> None:
    batch_id = submit(cli, tmp_path, [f"question {i}" for i in range(300)])

    paused = run(cli, url, batch_id, "--max-concurrency", "16", key="sk-ant-wrong-key")

    assert paused.exit_code == 4, paused.output
    assert "authentication failed for endpoint anthropic: check ANTHROPIC_API_KEY" in paused.stderr
    assert app.stats.received <= 16
    counts = status(cli, batch_id)["request_counts"]
    assert counts["processing"] == 300
    assert counts["errored"] == 0
    assert run(cli, url, batch_id, "--max-concurrency", "16").exit_code == 0
    assert status(cli, batch_id)["request_counts"]["succeeded"] == 300


def test_malformed_and_cut_answers_are_retried_then_errored_with_the_reason(
    sqlite_cli: CliRunner, tmp_path: Path, app: SimulatorApp, url: str
) -> None:
    prompts = ["[[sim:malformed=1]] a", "[[sim:not_message=1]] b", "[[sim:cut=1]] c", "fine"]
    batch_id = submit(sqlite_cli, tmp_path, prompts)

    # 3 attempts: real back-offs of about 1 s and 2 s (5 would add 4 s and 8 s more).
    ran = run(sqlite_cli, url, batch_id, "--max-attempts", "3")

    assert ran.exit_code == 3, ran.output
    # A body that is not JSON is sent twice at most; JSON that is no Message once; a cut
    # connection as often as --max-attempts allows.
    assert app.stats.received == 2 + 1 + 3 + 1
    malformed, not_message, cut, fine = results(sqlite_cli, batch_id)
    assert fine["type"] == "succeeded"
    expected = [
        (
            malformed,
            "gave up after 2 attempts; last failure: malformed response: the response "
            "body is not JSON",
        ),
        (not_message, "The endpoint answered 200 but the body is JSON, but not a Message"),
        (cut, "gave up after 3 attempts; last failure: the connection failed (RemoteProtocolError"),
    ]
    for result, start in expected:
        assert result["type"] == "errored"
        message = result["error"]["error"]["message"]
        assert message.startswith(start), message


def test_a_hanging_answer_times_out_and_is_retried(
    sqlite_cli: CliRunner, tmp_path: Path, app: SimulatorApp, url: str
) -> None:
    batch_id = submit(
        sqlite_cli, tmp_path, ["[[sim:hang=1:times=1]] once", "[[sim:hang=1]] always"]
    )
    started = time.monotonic()

    ran = run(sqlite_cli, url, batch_id, "--timeout-s", "1", "--max-attempts", "2")

    elapsed_s = time.monotonic() - started
    assert ran.exit_code == 3, ran.output
    once, always = results(sqlite_cli, batch_id)
    assert once["type"] == "succeeded"
    assert always["type"] == "errored"
    message = always["error"]["error"]["message"]
    assert message == (
        "gave up after 2 attempts; last failure: no complete answer within 1 s (timeout_s)"
    )
    assert always["error"]["error"]["type"] == "timeout_error"
    # Two 1 s timeouts and one back-off of at most 1 s, not the 600 s default.
    assert 2 <= elapsed_s < 10


@pytest.mark.parametrize("bad_key", ["sk-ant-SECRET\nkey", "sk-ant-SECRET\u2019key"])
def test_a_key_http_cannot_carry_stops_the_run_before_sending_without_showing_it(
    sqlite_cli: CliRunner, tmp_path: Path, app: SimulatorApp, url: str, bad_key: str
) -> None:
    batch_id = submit(sqlite_cli, tmp_path, ["hello"])

    ran = run(sqlite_cli, url, batch_id, key=bad_key)

    assert ran.exit_code == 1, ran.output
    assert ran.stderr.startswith("error: character 14 of the x-api-key header for endpoint ")
    assert "check ANTHROPIC_API_KEY" in ran.stderr
    assert "SECRET" not in ran.output
    assert "Traceback" not in ran.output
    assert app.stats.received == 0
    assert status(sqlite_cli, batch_id)["request_counts"]["processing"] == 1
