"""`batchrun run` with endpoints from a config file: moving a batch to another endpoint,
extra_body, per-endpoint timeout and attempts, and the limits handed to the limiter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from batchrun.cli.app import app
from batchrun.dispatch.settings import DEFAULT_MAX_ATTEMPTS
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.limiter import Limiter
from batchrun.ops.runner import dispatch_config, rate_limits
from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from batchrun.transport.endpoints import LANGDOCK_LIMITS, Endpoint, builtin_endpoints
from tests.conftest import cli_env, jsonl, request_line


@pytest.fixture
def cli(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def invoke(cli: CliRunner, *args: str, **env: str) -> Result:
    return cli.invoke(app, list(args), env=env or None)


def submit(cli: CliRunner, tmp_path: Path, lines: list[dict[str, object]], endpoint: str) -> str:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines))
    result = invoke(cli, "submit", str(path), "--endpoint", endpoint)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def status(cli: CliRunner, batch_id: str) -> dict[str, object]:
    return dict(json.loads(invoke(cli, "status", batch_id, "--json").stdout))


def results(cli: CliRunner, batch_id: str) -> dict[str, dict[str, object]]:
    lines = invoke(cli, "results", batch_id, "--partial").stdout.splitlines()
    return {item["custom_id"]: item["result"] for item in map(json.loads, lines)}


def toml_value(value: object) -> str:
    """Strings and numbers are written alike in JSON and TOML; tables are not."""
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    return json.dumps(value)


def gateway(name: str, url: str, path: str = "/v1/messages", **extra: object) -> str:
    """A key-less [endpoints.NAME] table at ``url``."""
    lines = [f"[endpoints.{name}]", f'base_url = "{url}"', f'messages_path = "{path}"']
    lines += ['auth = "none"', *(f"{key} = {toml_value(value)}" for key, value in extra.items())]
    return "\n".join(lines) + "\n"


def test_run_endpoint_moves_the_remaining_requests_and_stores_the_new_name(
    cli: CliRunner, tmp_path: Path
) -> None:
    # One simulator behind two endpoint names, told apart by path: a directive that fails
    # only the first reception then fails on gw-a and succeeds after the move to gw-b.
    simulator = create_app(SimulatorConfig())
    lines = [
        request_line("r1"),
        request_line("r2", "[[sim:status=429:spend_limit=1:times=1]] hi"),
        request_line("r3"),
    ]
    with running_simulator(app=simulator) as url:
        config = tmp_path / "batchrun.toml"
        config.write_text(
            gateway("gw-a", url, "/a/v1/messages") + gateway("gw-b", url, "/b/v1/messages")
        )
        batch_id = submit(cli, tmp_path, lines, "gw-a")

        first = invoke(cli, "run", batch_id, "--max-concurrency", "1")
        assert first.exit_code == 4, first.output
        assert status(cli, batch_id)["request_counts"]["processing"] == 2  # type: ignore[index]

        moved = invoke(cli, "run", batch_id, "--endpoint", "gw-b")
        again = invoke(cli, "run", batch_id)

    assert moved.exit_code == 0, moved.output
    assert status(cli, batch_id)["endpoint"] == "gw-b"
    assert "nothing to run" in again.stderr
    assert {cid: r["type"] for cid, r in results(cli, batch_id).items()} == dict.fromkeys(
        ("r1", "r2", "r3"), "succeeded"
    )
    assert [entry.path for entry in simulator.stats.log] == [
        "/a/v1/messages",
        "/a/v1/messages",
        "/b/v1/messages",
        "/b/v1/messages",
    ]


def test_run_endpoint_needs_batch_ids(cli: CliRunner) -> None:
    result = invoke(cli, "run", "--endpoint", "simulator")

    assert result.exit_code == 2
    assert "name the batches to move" in result.output


def test_run_endpoint_without_its_key_moves_nothing(cli: CliRunner, tmp_path: Path) -> None:
    batch_id = submit(cli, tmp_path, [request_line("a")], "simulator")

    result = invoke(cli, "run", batch_id, "--endpoint", "langdock-eu")

    assert result.exit_code == 1
    assert "LANGDOCK_API_KEY is not set" in result.stderr
    assert status(cli, batch_id)["endpoint"] == "simulator"


def test_a_batch_whose_endpoint_is_no_longer_defined_says_how_to_move_it(
    cli: CliRunner, tmp_path: Path
) -> None:
    config = tmp_path / "batchrun.toml"
    config.write_text(gateway("gone", "http://127.0.0.1:9"))
    batch_id = submit(cli, tmp_path, [request_line("a")], "gone")
    config.unlink()

    result = invoke(cli, "run", batch_id)

    # The batch waits (nothing sent, still queued): exit 4, with the way out.
    assert result.exit_code == 4
    assert f"{batch_id} paused: its endpoint 'gone' is not defined" in result.stderr
    assert f"`batchrun run {batch_id} --endpoint NAME`" in result.stderr


def test_extra_body_reaches_every_request_and_request_params_win(
    cli: CliRunner, tmp_path: Path
) -> None:
    # The simulator obeys directives in `system`, so the reply length shows which system
    # prompt it received.
    extra = {"system": "[[sim:output_tokens=7]]", "preference": "speed"}
    lines = [
        request_line("plain"),
        request_line("own-system", system="[[sim:output_tokens=9]]"),
    ]
    with running_simulator() as url:
        (tmp_path / "batchrun.toml").write_text(gateway("gw", url, extra_body=extra))
        batch_id = submit(cli, tmp_path, lines, "gw")
        run = invoke(cli, "run", batch_id)

    assert run.exit_code == 0, run.output
    found = results(cli, batch_id)
    assert found["plain"]["message"]["usage"]["output_tokens"] == 7  # type: ignore[index]
    assert found["own-system"]["message"]["usage"]["output_tokens"] == 9  # type: ignore[index]


def test_max_attempts_comes_from_the_flag_then_the_file(cli: CliRunner, tmp_path: Path) -> None:
    line = request_line("a", "[[sim:status=500:times=1]] hi")
    with running_simulator() as url:
        (tmp_path / "batchrun.toml").write_text(gateway("gw", url, max_attempts=1))
        from_file = submit(cli, tmp_path, [line], "gw")
        file_run = invoke(cli, "run", from_file)
        from_flag = submit(cli, tmp_path, [line], "gw")
        flag_run = invoke(cli, "run", from_flag, "--max-attempts", "2")

    assert file_run.exit_code == 3, file_run.output
    assert "gave up after 1 attempts" in json.dumps(results(cli, from_file))
    assert flag_run.exit_code == 0, flag_run.output


def test_timeout_s_comes_from_the_file(cli: CliRunner, tmp_path: Path) -> None:
    with running_simulator() as url:
        (tmp_path / "batchrun.toml").write_text(gateway("gw", url, timeout_s=1, max_attempts=1))
        batch_id = submit(cli, tmp_path, [request_line("a", "[[sim:hang=1]]")], "gw")
        run = invoke(cli, "run", batch_id)

    assert run.exit_code == 3, run.output
    assert "no complete answer within 1 s (timeout_s)" in json.dumps(results(cli, batch_id))


# -- the run's settings from its endpoints (pure) -----------------------------------------

HAIKU = "claude-3-haiku-20240307"


def endpoint(name: str, **limits: RateLimits) -> Endpoint:
    return Endpoint(name=name, base_url="https://x.example", auth="none", limits=limits)


def test_an_endpoints_wildcard_limits_cover_every_model() -> None:
    langdock = builtin_endpoints({})["langdock-eu"]

    limiter = Limiter(rate_limits({"langdock-eu": langdock}))

    assert limiter.limits_for(("langdock-eu", "claude-any")) == LANGDOCK_LIMITS


def test_named_models_get_their_own_limits_and_others_their_endpoints_wildcard() -> None:
    gw = endpoint("gw", **{HAIKU: RateLimits(rpm=50), "*": RateLimits(rpm=10)})
    other = endpoint("other", **{"*": RateLimits(rpm=20)})

    limiter = Limiter(rate_limits({"gw": gw, "other": other}))

    assert limiter.limits_for(("gw", HAIKU)) == RateLimits(rpm=50)
    assert limiter.limits_for(("gw", "claude-other")) == RateLimits(rpm=10)
    assert limiter.limits_for(("other", HAIKU)) == RateLimits(rpm=20)


def test_a_limit_flag_replaces_that_limit_and_keeps_the_others() -> None:
    gw = endpoint("gw", **{HAIKU: RateLimits(rpm=50, tpm=1000)})

    limiter = Limiter(rate_limits({"gw": gw}), overrides=RateLimits(rpm=30))

    assert limiter.limits_for(("gw", HAIKU)) == RateLimits(rpm=30, tpm=1000)
    assert limiter.limits_for(("gw", "claude-other")) == RateLimits(rpm=30)


def test_max_attempts_flag_beats_each_endpoints_own_which_beats_the_default() -> None:
    endpoints = {
        "own": Endpoint(name="own", base_url="https://x.example", max_attempts=2),
        "plain": Endpoint(name="plain", base_url="https://x.example"),
    }

    from_endpoints = dispatch_config(endpoints, max_concurrency=4, max_attempts=None)
    from_flag = dispatch_config(endpoints, max_concurrency=4, max_attempts=5)

    assert from_endpoints.max_attempts_for("own") == 2
    assert from_endpoints.max_attempts_for("plain") == DEFAULT_MAX_ATTEMPTS
    assert from_flag.max_attempts_for("own") == from_flag.max_attempts_for("plain") == 5
