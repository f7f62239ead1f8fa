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


@pytest.mark.parametrize(
    ("args", "keys", "fragment"),
    [
        (["--insecure-no-auth", "--allowed-hosts", "*"], None, "DNS rebinding"),
        (["--allowed-hosts", "https://x.example/"], GOOD_KEY, "is not a host name"),
        (["--header-timeout", "0s"], GOOD_KEY, "is not a positive duration"),
        (["--body-timeout", "soon"], GOOD_KEY, "--body-timeout"),
        (["--max-connections", "0"], GOOD_KEY, "--max-connections must be 1 or more"),
    ],
)
def test_unusable_host_and_connection_limits_are_refused_before_it_listens(
    cli: CliRunner, args: list[str], keys: str | None, fragment: str
) -> None:
    env = {"BATCHRUN_SERVE_API_KEYS": keys} if keys else {}
    result = serve(cli, *args, **env)
    assert result.exit_code != 0
    assert fragment in result.output, result.output
    assert "Traceback" not in result.output


def test_help_states_the_connection_limits_in_force(cli: CliRunner) -> None:
    from batchrun.server.connections import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, MAX_CONNECTIONS

    result = cli.invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert f"[default: {HEADER_TIMEOUT_S:g}s]" in text
    assert f"[default: {BODY_TIMEOUT_S:g}s]" in text
    assert f"[default: {MAX_CONNECTIONS}]" in text
    assert "--allowed-hosts" in text
