"""Unattended runs (cron) that one bad batch must not stop: a batch whose endpoint has no key
set here, or is not defined any more, waits while every other batch runs (exit 4, one line
naming the batch, the variable or endpoint, and the fix); `submit` warns about a key that is
not set now; `run -q` still prints one line per paused batch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import batchrun
from batchrun.cli.app import app
from batchrun.errors import ExitCode
from batchrun.ops.waiting import WaitingBatch
from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from batchrun.simulator.app import SimulatorApp
from tests.conftest import cli_env, jsonl, request_line

KEY_A = "GW_A_KEY"
KEY_B = "GW_B_KEY"


@pytest.fixture
def cli(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home") | {KEY_A: None, KEY_B: None})


@pytest.fixture
def simulator() -> Iterator[tuple[SimulatorApp, str]]:
    app_ = create_app(SimulatorConfig())
    with running_simulator(app=app_) as url:
        yield app_, url


def invoke(cli: CliRunner, *args: str, **env: str) -> Result:
    return cli.invoke(app, list(args), env=env or None)


def keyed_endpoint(name: str, url: str, variable: str, **extra: str) -> str:
    """A [endpoints.NAME] table at ``url`` whose bearer key is read from ``variable``."""
    lines = [
        f"[endpoints.{name}]",
        f'base_url = "{url}"',
        f'messages_path = "/{name}/v1/messages"',
        'auth = "bearer"',
        f'api_key_env = "{variable}"',
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    return "\n".join(lines) + "\n"


def write_config(tmp_path: Path, *tables: str) -> None:
    (tmp_path / "batchrun.toml").write_text("".join(tables))


def submit(cli: CliRunner, tmp_path: Path, name: str, endpoint: str, count: int, **env: str) -> str:
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(jsonl([request_line(f"{name}-{i}") for i in range(count)]))
    result = invoke(cli, "submit", str(path), "--endpoint", endpoint, **env)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def status(cli: CliRunner, batch_id: str) -> dict[str, object]:
    result = invoke(cli, "status", batch_id, "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def counts(cli: CliRunner, batch_id: str) -> dict[str, int]:
    found = status(cli, batch_id)["request_counts"]
    assert isinstance(found, dict)
    return {str(k): int(v) for k, v in found.items()}


def lines_naming(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(word in line for word in words)]


# -- item 5: a batch whose endpoint cannot be used here waits; the others run ---------------


def test_run_sends_every_batch_whose_key_is_set_and_leaves_the_one_without_a_key_waiting(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    write_config(tmp_path, keyed_endpoint("gw-a", url, KEY_A), keyed_endpoint("gw-b", url, KEY_B))
    a = submit(cli, tmp_path, "a", "gw-a", 3, **{KEY_A: "key-a"})
    b = submit(cli, tmp_path, "b", "gw-b", 4, **{KEY_A: "key-a"})

    ran = invoke(cli, "run", **{KEY_A: "key-a"})

    assert ran.exit_code == ExitCode.PAUSED, ran.output
    assert "Traceback" not in ran.output
    assert counts(cli, a)["succeeded"] == 3
    assert status(cli, a)["processing_status"] == "ended"
    # Nothing of b was sent, nothing errored; it is still queued, not paused in the database
    # (another worker with the key may send it).
    assert sim.stats.received == 3
    assert counts(cli, b) == {
        "processing": 4,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert status(cli, b)["processing_status"] == "in_progress"
    assert status(cli, b)["paused_reason"] is None
    named = lines_naming(ran.stderr, b, KEY_B)
    assert named, ran.stderr
    assert any(f"batchrun run {b}" in line for line in named), named
    assert not lines_naming(ran.stderr, a, KEY_B)

    # The next run with the key set sends it.
    again = invoke(cli, "run", **{KEY_A: "key-a", KEY_B: "key-b"})
    assert again.exit_code == ExitCode.OK, again.output
    assert counts(cli, b)["succeeded"] == 4
    assert sim.stats.received == 7


def test_run_naming_only_a_batch_without_its_key_sends_nothing_and_exits_paused(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    write_config(tmp_path, keyed_endpoint("gw-b", url, KEY_B))
    b = submit(cli, tmp_path, "b", "gw-b", 2)

    ran = invoke(cli, "run", b)

    assert ran.exit_code == ExitCode.PAUSED, ran.output
    assert "Traceback" not in ran.output
    assert lines_naming(ran.stderr, b, KEY_B), ran.stderr
    assert sim.stats.received == 0
    assert counts(cli, b)["processing"] == 2


def test_a_missing_headers_env_variable_leaves_only_its_batch_waiting(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    write_config(
        tmp_path,
        keyed_endpoint("gw-a", url, KEY_A),
        keyed_endpoint("gw-b", url, KEY_A, headers_env='{ "x-tenant" = "GW_B_TENANT" }'),
    )
    env = {KEY_A: "key-a"}
    a = submit(cli, tmp_path, "a", "gw-a", 2, **env)
    b = submit(cli, tmp_path, "b", "gw-b", 2, **env)

    ran = invoke(cli, "run", **env)

    assert ran.exit_code == ExitCode.PAUSED, ran.output
    assert counts(cli, a)["succeeded"] == 2
    assert counts(cli, b)["processing"] == 2
    assert sim.stats.received == 2
    assert lines_naming(ran.stderr, b, "GW_B_TENANT"), ran.stderr


def test_a_batch_whose_endpoint_left_the_config_file_waits_while_the_others_run(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    env = {KEY_A: "key-a", KEY_B: "key-b"}
    write_config(tmp_path, keyed_endpoint("gw-a", url, KEY_A), keyed_endpoint("gw-b", url, KEY_B))
    a = submit(cli, tmp_path, "a", "gw-a", 2, **env)
    b = submit(cli, tmp_path, "b", "gw-b", 2, **env)
    # The config file changes: gw-b is gone.
    write_config(tmp_path, keyed_endpoint("gw-a", url, KEY_A))

    ran = invoke(cli, "run", **env)

    assert ran.exit_code == ExitCode.PAUSED, ran.output
    assert "Traceback" not in ran.output
    assert counts(cli, a)["succeeded"] == 2
    assert counts(cli, b)["processing"] == 2
    assert sim.stats.received == 2
    named = lines_naming(ran.stderr, b, "gw-b")
    assert any("--endpoint" in line for line in named), ran.stderr

    # Moving it to a defined endpoint sends it.
    moved = invoke(cli, "run", b, "--endpoint", "gw-a", **env)
    assert moved.exit_code == ExitCode.OK, moved.output
    assert counts(cli, b)["succeeded"] == 2


def test_submit_warns_when_the_endpoints_key_is_not_set_now(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    _, url = simulator
    write_config(tmp_path, keyed_endpoint("gw-b", url, KEY_B))
    path = tmp_path / "b.jsonl"
    path.write_bytes(jsonl([request_line("b-0")]))

    result = invoke(cli, "submit", str(path), "--endpoint", "gw-b")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("msgbatch_")
    assert len(result.stdout.splitlines()) == 1
    warned = lines_naming(result.stderr, KEY_B)
    assert len(warned) == 1, result.stderr
    assert "gw-b" in warned[0]

    with_key = invoke(cli, "submit", str(path), "--endpoint", "gw-b", **{KEY_B: "key-b"})
    assert with_key.exit_code == 0, with_key.output
    assert KEY_B not in with_key.stderr


def test_the_python_api_reports_a_waiting_batch_in_its_result_instead_of_raising(
    tmp_path: Path, db_url: str, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    config = tmp_path / "batchrun.toml"
    config.write_text(keyed_endpoint("gw-a", url, KEY_A) + keyed_endpoint("gw-b", url, KEY_B))
    requests = tmp_path / "r.jsonl"
    requests.write_bytes(jsonl([request_line("r-0"), request_line("r-1")]))
    env = {"HOME": str(tmp_path / "home"), KEY_A: "key-a"}
    with batchrun.Client(db_url, config=config, env=env, cwd=tmp_path) as client:
        a = client.submit(requests, endpoint="gw-a").id
        b = client.submit(requests, endpoint="gw-b").id
        assert client.waiting_reason(a) is None

        result = client.run()

        assert result.exit_code == ExitCode.PAUSED
        assert [(w.batch_id, w.endpoint, w.variable) for w in result.waiting] == [
            (b, "gw-b", KEY_B)
        ]
        assert all(isinstance(w, WaitingBatch) for w in result.waiting)
        assert result.last is not None
        assert result.last.to_json()["waiting"] == {b: result.waiting[0].reason}
        assert client.status(a).processing_status == "ended"
        assert client.status(b).request_counts.processing == 2
        assert sim.stats.received == 2


# -- item 12: `run -q` says every pause, one line each -------------------------------------


def test_run_quiet_prints_one_line_per_paused_batch_with_the_command_that_continues_it(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    _, url = simulator
    env = {KEY_A: "key-a"}
    write_config(tmp_path, keyed_endpoint("gw-a", url, KEY_A), keyed_endpoint("gw-b", url, KEY_B))
    a = submit(cli, tmp_path, "a", "gw-a", 2, **env)
    b = submit(cli, tmp_path, "b", "gw-b", 2, **env)
    # A budget too small for one request pauses a as it starts (the run's own pause).
    ran = invoke(cli, "run", "-q", "--max-cost", "0.000001", **env)

    assert ran.exit_code == ExitCode.PAUSED, ran.output
    assert ran.stdout == ""
    lines = ran.stderr.splitlines()
    assert len(lines) == 2, ran.stderr
    for batch_id, why in ((a, "max-cost"), (b, KEY_B)):
        (line,) = [line for line in lines if line.startswith(f"{batch_id} paused: ")]
        assert why in line
        assert line.endswith(f"`batchrun run {batch_id}`")


def test_run_quiet_prints_nothing_when_nothing_paused(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    _, url = simulator
    env = {KEY_A: "key-a"}
    write_config(tmp_path, keyed_endpoint("gw-a", url, KEY_A))
    submit(cli, tmp_path, "a", "gw-a", 2, **env)

    ran = invoke(cli, "run", "-q", **env)

    assert ran.exit_code == ExitCode.OK, ran.output
    assert ran.output == ""


# -- item 6: a budget with models that have no price ----------------------------------------

UNPRICED = "gpt-4o-mini-unpriced"


def mixed_file(tmp_path: Path, priced: int = 3, unpriced: int = 2) -> Path:
    path = tmp_path / "mixed.jsonl"
    lines = [request_line(f"p-{i}") for i in range(priced)]
    lines += [request_line(f"u-{i}", model=UNPRICED) for i in range(unpriced)]
    path.write_bytes(jsonl(lines))
    return path


def price_table(model: str) -> str:
    return f'[prices."{model}"]\ninput = 1.0\noutput = 2.0\n'


def test_submit_max_cost_with_an_unpriced_model_is_refused_naming_it_and_the_price_to_add(
    cli: CliRunner, tmp_path: Path
) -> None:
    result = invoke(cli, "submit", str(mixed_file(tmp_path)), "--max-cost", "5")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert UNPRICED in result.stderr
    assert f'[prices."{UNPRICED}"]' in result.stderr
    assert "--hold-unpriced" in result.stderr
    listed = invoke(cli, "list", "--json")
    assert json.loads(listed.stdout)["data"] == []


def test_run_max_cost_on_a_batch_with_an_unpriced_model_is_refused_and_sends_nothing(
    cli: CliRunner, tmp_path: Path
) -> None:
    stored = invoke(cli, "submit", str(mixed_file(tmp_path)), "--endpoint", "simulator")
    assert stored.exit_code == 0, stored.output
    batch_id = stored.stdout.strip()

    ran = invoke(cli, "run", batch_id, "--max-cost", "5")

    assert ran.exit_code == ExitCode.USAGE, ran.output
    assert "Traceback" not in ran.output
    assert UNPRICED in ran.stderr
    assert batch_id in ran.stderr
    assert status(cli, batch_id)["max_cost_usd"] is None
    assert counts(cli, batch_id)["processing"] == 5


def test_hold_unpriced_sends_the_priced_requests_and_holds_the_others_until_a_price_is_added(
    cli: CliRunner, tmp_path: Path
) -> None:
    stored = invoke(
        cli,
        "submit",
        str(mixed_file(tmp_path)),
        "--endpoint",
        "simulator",
        "--max-cost",
        "5",
        "--hold-unpriced",
    )
    assert stored.exit_code == 0, stored.output
    batch_id = stored.stdout.strip()

    ran = invoke(cli, "run", "-q")

    # The priced requests ran; the unpriced ones wait, unsent, and say so.
    assert ran.exit_code == ExitCode.PAUSED, ran.output
    assert counts(cli, batch_id) == {
        "processing": 2,
        "succeeded": 3,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    (line,) = ran.stderr.splitlines()
    assert line.startswith(f"{batch_id} paused: 2 requests of {UNPRICED} are held")
    assert f'[prices."{UNPRICED}"]' in line
    assert line.endswith(f"`batchrun run {batch_id}`")
    shown = status(cli, batch_id)
    assert shown["processing_status"] == "in_progress"
    assert shown["held_unpriced"] == {UNPRICED: 2}
    assert lines_naming(invoke(cli, "status", batch_id).stdout, "held", f"2 ({UNPRICED}: 2)")

    # A rerun sends nothing more and says the same; the batch does not end.
    again = invoke(cli, "run", "-q")
    assert again.exit_code == ExitCode.PAUSED, again.output
    assert counts(cli, batch_id)["succeeded"] == 3

    # A price lets them go.
    write_config(tmp_path, price_table(UNPRICED))
    priced = invoke(cli, "run", "-q")
    assert priced.exit_code == ExitCode.OK, priced.output
    assert priced.output == ""
    assert counts(cli, batch_id)["succeeded"] == 5
    assert status(cli, batch_id)["processing_status"] == "ended"
    assert status(cli, batch_id)["held_unpriced"] == {}


def test_cancel_ends_a_batch_whose_unpriced_requests_are_held(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = str(mixed_file(tmp_path))
    stored = invoke(cli, "submit", path, "--endpoint", "simulator", "--max-cost", "5")
    assert stored.exit_code == ExitCode.USAGE
    stored = invoke(
        cli, "submit", path, "--endpoint", "simulator", "--max-cost", "5", "--hold-unpriced"
    )
    batch_id = stored.stdout.strip()
    assert invoke(cli, "run").exit_code == ExitCode.PAUSED

    canceled = invoke(cli, "cancel", batch_id)

    assert canceled.exit_code == 0, canceled.output
    assert status(cli, batch_id)["processing_status"] == "ended"
    assert counts(cli, batch_id)["canceled"] == 2
    assert counts(cli, batch_id)["succeeded"] == 3


def test_run_hold_unpriced_keeps_a_new_budget_for_the_priced_requests_only(
    cli: CliRunner, tmp_path: Path
) -> None:
    stored = invoke(cli, "submit", str(mixed_file(tmp_path)), "--endpoint", "simulator")
    batch_id = stored.stdout.strip()

    ran = invoke(cli, "run", batch_id, "--max-cost", "5", "--hold-unpriced")

    assert ran.exit_code == ExitCode.PAUSED, ran.output
    assert status(cli, batch_id)["max_cost_usd"] == 5
    assert counts(cli, batch_id)["succeeded"] == 3
    assert counts(cli, batch_id)["processing"] == 2
    assert lines_naming(ran.stderr, batch_id, "held", UNPRICED)


def test_a_pool_with_one_member_whose_key_is_not_set_waits_naming_that_variable(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    env = {KEY_A: "key-a"}
    write_config(
        tmp_path,
        keyed_endpoint("gw-a", url, KEY_A),
        keyed_endpoint("gw-b", url, KEY_B),
        '[pools.both]\nmembers = ["gw-a", "gw-b"]\n',
    )
    alone = submit(cli, tmp_path, "alone", "gw-a", 2, **env)
    pooled = submit(cli, tmp_path, "pooled", "both", 2, **env)

    ran = invoke(cli, "run", **env)

    assert ran.exit_code == ExitCode.PAUSED, ran.output
    assert counts(cli, alone)["succeeded"] == 2
    assert counts(cli, pooled)["processing"] == 2
    assert sim.stats.received == 2
    assert lines_naming(ran.stderr, pooled, KEY_B), ran.stderr


def test_the_python_api_holds_unpriced_requests_and_reports_them_typed(
    tmp_path: Path, db_url: str
) -> None:
    env = {"HOME": str(tmp_path / "home")}
    with batchrun.Client(db_url, env=env, cwd=tmp_path) as client:
        with pytest.raises(batchrun.UnpricedModelsError) as refused:
            client.submit(mixed_file(tmp_path), endpoint="simulator", max_cost_usd=5)
        assert refused.value.exit_code == ExitCode.USAGE
        assert client.list() == []
        batch = client.submit(
            mixed_file(tmp_path), endpoint="simulator", max_cost_usd=5, hold_unpriced=True
        )

        result = client.run(batch.id)

        assert result.exit_code == ExitCode.PAUSED
        assert result.last is not None
        assert result.last.held == {batch.id: {UNPRICED: 2}}
        assert "held" in result.last.report.paused[batch.id]
        assert client.status(batch.id).held_unpriced == {UNPRICED: 2}
        assert client.status(batch.id).request_counts.succeeded == 3


def test_held_requests_stay_out_of_the_batch_lane_while_the_priced_ones_go_there(
    cli: CliRunner, tmp_path: Path
) -> None:
    sim = create_app(SimulatorConfig(batch_processing_s=0.2))
    with running_simulator(app=sim) as url:
        (tmp_path / "batchrun.toml").write_text(
            f'[endpoints.sim]\nbase_url = "{url}"\nauth = "none"\nbatch_api = "anthropic"\n'
        )
        stored = invoke(
            cli,
            "submit",
            str(mixed_file(tmp_path)),
            "--endpoint",
            "sim",
            "--lane",
            "batch",
            "--max-cost",
            "5",
            "--hold-unpriced",
        )
        assert stored.exit_code == 0, stored.output
        batch_id = stored.stdout.strip()

        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s", "-q")

        assert ran.exit_code == ExitCode.PAUSED, ran.output
        assert sim.stats.batch_requests_received == 3
        assert sim.stats.received == 0
        assert counts(cli, batch_id)["succeeded"] == 3
        assert status(cli, batch_id)["held_unpriced"] == {UNPRICED: 2}
        assert lines_naming(ran.stderr, batch_id, "held")


def test_run_forever_sends_the_others_says_the_waiting_batch_once_and_exits_paused(
    cli: CliRunner, tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    sim, url = simulator
    env = {KEY_A: "key-a"}
    write_config(tmp_path, keyed_endpoint("gw-a", url, KEY_A), keyed_endpoint("gw-b", url, KEY_B))
    a = submit(cli, tmp_path, "a", "gw-a", 2, **env)
    b = submit(cli, tmp_path, "b", "gw-b", 2, **env)

    ran = invoke(
        cli, "run", "--forever", "--max-runtime", "2s", "--poll-interval", "0.2s", "-q", **env
    )

    assert ran.exit_code == ExitCode.PAUSED, ran.output
    assert counts(cli, a)["succeeded"] == 2
    assert counts(cli, b)["processing"] == 2
    assert sim.stats.received == 2
    assert len(lines_naming(ran.stderr, b, KEY_B)) == 1, ran.stderr


def test_raising_the_budget_of_a_batch_that_holds_unpriced_requests_needs_no_flag_again(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = str(mixed_file(tmp_path))
    stored = invoke(
        cli, "submit", path, "--endpoint", "simulator", "--max-cost", "5", "--hold-unpriced"
    )
    batch_id = stored.stdout.strip()
    assert invoke(cli, "run", batch_id).exit_code == ExitCode.PAUSED

    raised = invoke(cli, "run", batch_id, "--max-cost", "10")

    assert raised.exit_code == ExitCode.PAUSED, raised.output
    assert status(cli, batch_id)["max_cost_usd"] == 10
    assert status(cli, batch_id)["held_unpriced"] == {UNPRICED: 2}


def test_run_quiet_prints_a_pause_for_rejected_credentials(cli: CliRunner, tmp_path: Path) -> None:
    with running_simulator(SimulatorConfig(required_api_key="right-key")) as url:
        write_config(tmp_path, keyed_endpoint("gw-a", url, KEY_A))
        batch_id = submit(cli, tmp_path, "a", "gw-a", 2, **{KEY_A: "wrong-key"})

        ran = invoke(cli, "run", "-q", **{KEY_A: "wrong-key"})

    assert ran.exit_code == ExitCode.PAUSED, ran.output
    (line,) = ran.stderr.splitlines()
    assert line.startswith(f"{batch_id} paused: authentication failed")
    assert "wrong-key" not in line
    assert line.endswith(f"`batchrun run {batch_id}`")
