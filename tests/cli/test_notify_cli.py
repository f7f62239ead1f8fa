"""`run --notify URL` and the config file's [notify] through the CLI (typer's CliRunner),
against a real webhook receiver on 127.0.0.1 and the in-process simulator: what is POSTed
when a batch ends or pauses, that a receiver failing twice changes nothing for the run, how
a bad URL is refused, and that the URL's secret path is never printed."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from batchrun.cli.app import app
from tests.conftest import cli_env, jsonl, request_line
from tests.webhooks import BODY_MARKER, SECRET_PATH, running_webhook_receiver

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "requests.jsonl"
HAIKU = "claude-3-haiku-20240307"


@pytest.fixture
def cli(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    # No config file of the machine running the tests may be found.
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(sqlite_url, tmp_path / "home"))


def invoke(cli: CliRunner, *args: str, **env: str) -> Result:
    return cli.invoke(app, list(args), env=env or None)


def submit(cli: CliRunner, path: Path, *extra: str) -> str:
    result = invoke(cli, "submit", str(path), "--endpoint", "simulator", *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def status_json(cli: CliRunner, batch_id: str) -> dict[str, Any]:
    result = invoke(cli, "status", batch_id, "--json")
    assert result.exit_code == 0, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET_PATH not in text and "s3cr3t" not in text and BODY_MARKER not in text


def test_run_notify_posts_the_end_of_a_batch_with_its_counts_and_cost(
    cli: CliRunner, caplog: pytest.LogCaptureFixture
) -> None:
    batch_id = submit(cli, SAMPLES, "--name", "samples")

    with running_webhook_receiver() as receiver:
        result = invoke(cli, "run", batch_id, "--notify", receiver.url)

    assert result.exit_code == 0, result.output
    (document,) = receiver.delivered()
    state = status_json(cli, batch_id)
    assert document["event"] == "ended"
    assert document["batch"] == {"id": batch_id, "name": "samples", "endpoint": "simulator"}
    assert document["request_counts"] == state["request_counts"]
    assert document["request_counts"]["succeeded"] == 6
    assert document["cost_usd"] == pytest.approx(state["cost_usd"])
    assert document["reason"] is None and document["continue_command"] is None
    no_secret(result.output, caplog.text)


def test_a_budget_pause_is_posted_with_its_reason_and_the_command_that_continues(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "budget.jsonl"
    path.write_bytes(
        jsonl([request_line(f"r{i:02d}", model=HAIKU, max_tokens=1000) for i in range(40)])
    )
    batch_id = submit(cli, path)

    with running_webhook_receiver() as receiver:
        paused = invoke(
            cli, "run", batch_id, "--max-cost", "0.003", "--max-concurrency", "1",
            "--notify", receiver.url,
        )  # fmt: skip

    assert paused.exit_code == 4, paused.output
    (document,) = receiver.delivered()
    assert document["event"] == "paused"
    assert "max-cost $0.0030 reached" in document["reason"]
    assert document["continue_command"] == f"batchrun run {batch_id}"
    assert document["request_counts"] == status_json(cli, batch_id)["request_counts"]


def test_a_receiver_failing_twice_gets_the_notification_once_and_the_run_is_unchanged(
    cli: CliRunner, caplog: pytest.LogCaptureFixture
) -> None:
    batch_id = submit(cli, SAMPLES)

    with running_webhook_receiver(500, 500) as receiver:
        result = invoke(cli, "run", batch_id, "--notify", receiver.url)

    assert result.exit_code == 0, result.output
    assert [post.status for post in receiver.posts] == [500, 500, 200]
    assert [doc["event"] for doc in receiver.delivered()] == ["ended"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    no_secret(result.output, caplog.text)


def test_the_config_file_names_the_variable_that_holds_the_url(
    cli: CliRunner, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[notify]\nurl_env = "TEST_HOOK_URL"\n')
    first, second = submit(cli, SAMPLES), submit(cli, SAMPLES)

    with running_webhook_receiver() as receiver:
        told = invoke(cli, "--config", str(config), "run", first, TEST_HOOK_URL=receiver.url)
        off = invoke(cli, "--config", str(config), "run", second, "--notify", "",
                     TEST_HOOK_URL=receiver.url)  # fmt: skip

    assert told.exit_code == 0 and off.exit_code == 0, told.output + off.output
    assert [doc["batch"]["id"] for doc in receiver.delivered()] == [first]


def test_a_variable_that_is_not_set_is_a_warning_and_the_run_goes_on(
    cli: CliRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[notify]\nurl_env = "TEST_HOOK_URL"\n')
    batch_id = submit(cli, SAMPLES)

    result = invoke(cli, "--config", str(config), "run", batch_id)

    assert result.exit_code == 0, result.output
    assert "$TEST_HOOK_URL is not set" in caplog.text


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/s3cr3t", "hooks.example.com/s3cr3t"])
def test_a_notify_url_that_is_not_http_is_a_usage_error_that_does_not_echo_it(
    cli: CliRunner, url: str
) -> None:
    result = invoke(cli, "run", "--notify", url)

    assert result.exit_code == 2
    assert "--notify" in result.stderr and "http:// or https://" in result.stderr
    no_secret(result.output)


def test_a_bad_url_in_the_config_file_names_the_file_and_the_key(
    cli: CliRunner, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[notify]\nurl = "smtp://hooks.example.com/s3cr3t"\n')
    batch_id = submit(cli, SAMPLES)

    result = invoke(cli, "--config", str(config), "run", batch_id)

    assert result.exit_code == 1
    assert f"{config}: notify.url: must be an http:// or https:// URL" in result.stderr
    no_secret(result.output)
    assert status_json(cli, batch_id)["request_counts"]["processing"] == 6


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('url = "https://h/x"\nurl_env = "HOOK"', "notify: give url"),
        ("", "notify: give url"),
        ('urls = "https://h/x"', 'notify.urls: unknown key; did you mean "url"?'),
        ('url_env = "https://h/s3cr3t"', "notify.url_env: must be the name of an environment"),
    ],
)
def test_the_notify_table_takes_url_or_url_env(
    cli: CliRunner, tmp_path: Path, table: str, problem: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[notify]\n{table}\n")

    result = invoke(cli, "--config", str(config), "run")

    assert result.exit_code == 1
    assert f"{config}: {problem}" in result.stderr
    no_secret(result.output)
