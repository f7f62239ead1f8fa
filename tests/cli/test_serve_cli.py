"""`batchrun serve` refuses to start when it would be open to anyone, or is misconfigured,
with one clear line and a non-zero exit code, before it listens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from batchrun.cli.app import app
from tests.conftest import cli_env

GOOD_KEY = "a-long-enough-server-key-0123"


@pytest.fixture
def cli(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    env = cli_env(sqlite_url, tmp_path / "home") | {"BATCHRUN_SERVE_API_KEYS": None}
    yield CliRunner(env=env)


def serve(cli: CliRunner, *args: str, **env: str) -> Result:
    return cli.invoke(app, ["serve", "--port", "0", *args], env=env or None)


def test_without_keys_it_refuses_and_says_how_to_set_them(cli: CliRunner) -> None:
    result = serve(cli)
    assert result.exit_code != 0
    assert "BATCHRUN_SERVE_API_KEYS" in result.output and "--insecure-no-auth" in result.output
    assert "Traceback" not in result.output


def test_no_auth_is_refused_on_an_address_other_hosts_reach(cli: CliRunner) -> None:
    result = serve(cli, "--insecure-no-auth", "--host", "0.0.0.0")
    assert result.exit_code != 0
    assert "loopback" in result.output


def test_no_auth_beside_keys_is_refused_as_ambiguous(cli: CliRunner) -> None:
    result = serve(cli, "--insecure-no-auth", BATCHRUN_SERVE_API_KEYS=GOOD_KEY)
    assert result.exit_code != 0
    assert "drop one" in result.output


@pytest.mark.parametrize("keys", ["short", f"{GOOD_KEY},has space in it 0123456789"])
def test_weak_or_malformed_keys_are_refused_without_echoing_them(cli: CliRunner, keys: str) -> None:
    result = serve(cli, BATCHRUN_SERVE_API_KEYS=keys)
    assert result.exit_code != 0
    assert "at least 16 characters" in result.output
    assert "short" not in result.output.replace("shorter", "")
    assert "has space" not in result.output


def test_an_unknown_endpoint_is_refused_naming_the_known_ones(cli: CliRunner) -> None:
    result = serve(cli, "--endpoint", "nowhere", BATCHRUN_SERVE_API_KEYS=GOOD_KEY)
    assert result.exit_code != 0
    assert "nowhere" in result.output and "simulator" in result.output


def test_serve_is_listed_in_help(cli: CliRunner) -> None:
    result = cli.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--workers" in result.output and "--insecure-no-auth" in result.output


def test_sending_here_needs_the_default_endpoints_key_at_start(cli: CliRunner) -> None:
    result = serve(cli, "--endpoint", "anthropic", BATCHRUN_SERVE_API_KEYS=GOOD_KEY)
    assert result.exit_code != 0
    assert "ANTHROPIC_API_KEY" in result.output
