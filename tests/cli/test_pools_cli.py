"""Pools from the CLI: a config file's [pools.NAME] accepted wherever an endpoint is, each
request answered by a member, the member named in status and in flat exports."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from tests.cli.test_run_endpoints import gateway, invoke, submit
from tests.conftest import cli_env, request_line


@pytest.fixture
def cli(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def test_a_batch_on_a_pool_is_answered_by_its_members_and_says_which(
    cli: CliRunner, tmp_path: Path
) -> None:
    first, second = create_app(SimulatorConfig()), create_app(SimulatorConfig())
    with running_simulator(app=first) as url_a, running_simulator(app=second) as url_b:
        (tmp_path / "batchrun.toml").write_text(
            gateway("sim-a", url_a)
            + gateway("sim-b", url_b)
            + '[pools.both]\nmembers = ["sim-a", { endpoint = "sim-b", weight = 2 }]\n'
        )
        listed = invoke(cli, "endpoints")
        assert "both (pool)" in listed.stdout
        assert "member:     sim-b (weight 2)" in listed.stdout
        batch_id = submit(cli, tmp_path, [request_line(f"r{i}") for i in range(60)], "both")
        ran = invoke(cli, "run", batch_id, "--progress-interval", "0.2")
        assert ran.exit_code == 0, ran.output
        shown = invoke(cli, "status", batch_id)
        as_json = json.loads(invoke(cli, "status", batch_id, "--json").stdout)
        flat = invoke(cli, "results", batch_id, "--format", "flat")

    assert first.stats.received + second.stats.received == 60
    assert as_json["endpoint"] == "both"
    by_endpoint = {use["endpoint"]: use for use in as_json["endpoints"]}
    assert set(by_endpoint) == {"sim-a", "sim-b"}
    assert by_endpoint["sim-a"]["answered"] == first.stats.received
    assert sum(use["share"] for use in by_endpoint.values()) == pytest.approx(1.0)
    assert "answered by" in shown.stdout and "sim-a:" in shown.stdout
    # Progress lines name each member with its share, rate and state.
    assert "pool: sim-a " in ran.stderr and "in rotation" in ran.stderr
    records = [json.loads(line) for line in flat.stdout.splitlines()]
    assert Counter(r["endpoint"] for r in records) == {
        "sim-a": first.stats.received,
        "sim-b": second.stats.received,
    }


def test_an_unknown_pool_member_is_named_with_the_file_and_key(
    cli: CliRunner, tmp_path: Path
) -> None:
    (tmp_path / "batchrun.toml").write_text('[pools.claude]\nmembers = ["anthropic", "nope"]\n')

    result = invoke(cli, "endpoints")

    assert result.exit_code != 0
    assert 'batchrun.toml: pools.claude.members[1]: unknown endpoint "nope"' in result.stderr
    assert "Traceback" not in result.output


def test_estimate_plans_a_pool_at_the_sum_of_its_members_limits(
    cli: CliRunner, tmp_path: Path
) -> None:
    (tmp_path / "batchrun.toml").write_text(
        '[pools.langdock]\nmembers = ["langdock-eu", "langdock-us"]\n'
    )
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(request_line(f"r{i}")) for i in range(10)) + "\n")

    one = json.loads(
        invoke(cli, "estimate", str(path), "--endpoint", "langdock-eu", "--json").stdout
    )
    both = json.loads(invoke(cli, "estimate", str(path), "--endpoint", "langdock", "--json").stdout)

    assert both["endpoint"] == "langdock"
    assert both["models"][0]["limits"]["rpm"] == 2 * one["models"][0]["limits"]["rpm"]


def test_status_still_works_when_the_config_file_does_not_load(
    cli: CliRunner, tmp_path: Path
) -> None:
    batch_id = submit(cli, tmp_path, [request_line("r1")], "simulator")
    (tmp_path / "batchrun.toml").write_text('[pools.claude]\nmembers = ["nope"]\n')

    shown = invoke(cli, "status", batch_id, "--json")

    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["id"] == batch_id
