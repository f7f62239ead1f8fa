"""A provider batch API that misbehaves (the hostile server): a 401 quoting the key, a create
answered with something that is not a batch, results with poisoned usage, a garbage line, a
stranger's line and the key echoed. Nothing is sent twice, the key is never kept, and no
answer ends more than its own request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from tests.cli.test_run_endpoints import invoke
from tests.conftest import cli_env, jsonl, request_line
from tests.hostile import HostileServer, running_hostile_server

KEY = "sk-hostile-batch-key-0123456789"


@pytest.fixture
def cli(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    env = cli_env(sqlite_url, tmp_path / "home") | {"HOSTILE_KEY": KEY}
    yield CliRunner(env=env)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HostileServer]:
    with running_hostile_server() as running:
        (tmp_path / "batchrun.toml").write_text(
            f'[endpoints.hostile]\nbase_url = "{running.url}"\napi_key_env = "HOSTILE_KEY"\n'
            'batch_api = "anthropic"\ntimeout_s = 5\n'
        )
        yield running


def submit(cli: CliRunner, tmp_path: Path, mode: str, count: int = 5) -> str:
    lines = [request_line(f"r{i}", f"<<hostile:{mode}>> q{i}") for i in range(count)]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines))
    result = invoke(cli, "submit", str(path), "--endpoint", "hostile", "--lane", "batch")
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def everything_stored(db_url: str) -> str:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        dumped = [
            json.dumps([list(map(str, row)) for row in conn.execute(text(f"SELECT * FROM {t}"))])
            for t in ("batches", "requests", "results", "provider_batches")
        ]
    engine.dispose()
    return "\n".join(dumped)


def creates(server: HostileServer) -> int:
    return sum(1 for request in server.log if b'"requests"' in request.body)


def test_a_create_refused_with_the_key_in_the_message_pauses_without_keeping_it(
    cli: CliRunner, tmp_path: Path, server: HostileServer, sqlite_url: str
) -> None:
    batch_id = submit(cli, tmp_path, "batch_echo_key")

    ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
    shown = invoke(cli, "status", batch_id)

    assert ran.exit_code == 4, ran.output
    assert "refused the create" in ran.stderr and "HTTP 401" in ran.stderr
    assert creates(server) == 1
    for output in (ran.output, shown.output, everything_stored(sqlite_url)):
        assert KEY not in output


def test_a_create_answered_with_no_batch_is_held_not_created_again(
    cli: CliRunner, tmp_path: Path, server: HostileServer
) -> None:
    batch_id = submit(cli, tmp_path, "batch_not_json")

    ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s", "--max-runtime", "2s")
    lanes = invoke(cli, "lanes", batch_id)

    assert ran.exit_code == 5, ran.output
    assert "may or may not have happened" in ran.stderr
    assert creates(server) == 1, "an unknown create is reconciled, never simply repeated"
    assert "intent" in lanes.stdout
    assert (
        json.loads(invoke(cli, "status", batch_id, "--json").stdout)["request_counts"]["processing"]
        == 5
    )


def test_poisoned_results_end_only_their_own_requests(
    cli: CliRunner, tmp_path: Path, server: HostileServer, sqlite_url: str
) -> None:
    batch_id = submit(cli, tmp_path, "batch_poisoned")

    ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
    records = {
        row["custom_id"]: row
        for row in map(
            json.loads, invoke(cli, "results", batch_id, "--format", "flat").stdout.splitlines()
        )
    }

    assert ran.exit_code == 3, ran.output  # some results errored
    assert records["r0"]["status"] == "succeeded"
    assert records["r1"]["status"] == "errored"  # usage of 2^63 tokens: refused
    # r2's line was garbage: it may have been billed, so it is not sent again.
    assert records["r2"]["status"] == "errored"
    assert "no readable result" in (records["r2"]["error_message"] or "")
    assert records["r3"]["status"] == records["r4"]["status"] == "succeeded"
    assert creates(server) == 1
    assert "1 unreadable lines" in ran.stderr
    assert KEY not in everything_stored(sqlite_url)
    assert KEY not in invoke(cli, "results", batch_id).stdout


def test_a_provider_batch_carries_the_endpoints_extra_body_under_each_request(
    cli: CliRunner, tmp_path: Path, server: HostileServer
) -> None:
    config = tmp_path / "batchrun.toml"
    config.write_text(config.read_text() + "[endpoints.hostile.extra_body]\ntemperature = 0.25\n")
    lines = [request_line("own", "q", temperature=0.9), request_line("plain", "q")]
    (tmp_path / "requests.jsonl").write_bytes(jsonl(lines))
    submitted = invoke(
        cli, "submit", str(tmp_path / "requests.jsonl"), "--endpoint", "hostile", "--lane", "batch"
    )

    ran = invoke(cli, "run", submitted.stdout.strip(), "--poll-interval", "0.2s")

    # The hostile server poisons its results' second line whatever the mode: only the create
    # body matters here.
    assert ran.exit_code == 3, ran.output
    created = [json.loads(r.body) for r in server.log if b'"requests"' in r.body]
    assert len(created) == 1
    temperatures = {
        item["custom_id"]: item["params"]["temperature"] for item in created[0]["requests"]
    }
    assert temperatures == {"own": 0.9, "plain": 0.25}
