"""A pool member that answers 200 with a body that is not a Message (an HTML login page, a
body that is not JSON, JSON of another shape), beside a healthy member and one that never
answers: the garbage member is taken out of rotation like a failing one, and a request whose
answer could not be read is sent once more, to another member, before it is given up. On a
single endpoint such answers end as ``invalid_response`` after a bounded number of sends.

Real servers on sockets: the simulator (healthy, and hanging), the hostile server (garbage).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from anthropic.types.messages import MessageBatchIndividualResponse
from typer.testing import CliRunner

from batchrun.dispatch.routing import FAILURES_TO_OPEN
from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from batchrun.simulator.config import FaultRates
from tests.cli.test_run_endpoints import gateway, invoke, submit
from tests.conftest import cli_env, request_line
from tests.hostile import running_hostile_server


@pytest.fixture
def cli(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


@pytest.mark.parametrize("garbage", ["html_login", "not_json", "foreign"])
def test_a_member_answering_garbage_is_taken_out_and_its_requests_succeed_elsewhere(
    cli: CliRunner, tmp_path: Path, garbage: str
) -> None:
    healthy = create_app(SimulatorConfig(latency_s=0.2))
    hanging = create_app(SimulatorConfig(faults=FaultRates(hang=1.0)))
    with (
        running_simulator(app=healthy) as healthy_url,
        running_simulator(app=hanging) as hanging_url,
        running_hostile_server() as hostile,
    ):
        hostile.default_mode = garbage
        (tmp_path / "batchrun.toml").write_text(
            gateway("healthy", healthy_url)
            + gateway("garbage", hostile.url)
            + gateway("hanging", hanging_url, timeout_s=1)
            + '[pools.trio]\nmembers = ["healthy", "garbage", "hanging"]\n'
        )
        # Nothing configured: each member starts at 60 requests a minute, so the batch is
        # big enough for the garbage member to get its unreadable answers before it ends.
        batch_id = submit(cli, tmp_path, [request_line(f"r{i}") for i in range(90)], "trio")
        ran = invoke(cli, "run", batch_id)
        shown = json.loads(invoke(cli, "status", batch_id, "--json").stdout)
        flat = invoke(cli, "results", batch_id, "--format", "flat").stdout

    assert ran.exit_code == 0, ran.output
    assert shown["request_counts"]["succeeded"] == 90, shown["request_counts"]
    records = [json.loads(line) for line in flat.splitlines()]
    assert Counter(r["endpoint"] for r in records) == {"healthy": 90}
    # Out of rotation after FAILURES_TO_OPEN unreadable answers in a row; a probe or two
    # later while the run lasts, never one per request.
    assert len(hostile.log) <= FAILURES_TO_OPEN + 2
    by_endpoint = {use["endpoint"]: use for use in shown["endpoints"]}
    assert by_endpoint["garbage"]["state"] == "open"
    assert "not a Message" in by_endpoint["garbage"]["reason"]


@pytest.mark.parametrize(("garbage", "sends"), [("html_login", 2), ("not_json", 2), ("foreign", 1)])
def test_on_a_single_endpoint_garbage_is_sent_at_most_twice_then_an_invalid_response(
    cli: CliRunner, tmp_path: Path, garbage: str, sends: int
) -> None:
    with running_hostile_server() as hostile:
        hostile.default_mode = garbage
        (tmp_path / "batchrun.toml").write_text(gateway("garbage", hostile.url))
        lines = [request_line(f"r{i}", f"question {i}") for i in range(3)]
        batch_id = submit(cli, tmp_path, lines, "garbage")
        ran = invoke(cli, "run", batch_id)
        shown = json.loads(invoke(cli, "status", batch_id, "--json").stdout)
        flat = invoke(cli, "results", batch_id, "--format", "flat").stdout
        exported = invoke(cli, "results", batch_id).stdout

    assert ran.exit_code == 3, ran.output
    # A body that is not JSON may have been cut on the way: once more. JSON that is no
    # Message would most likely come again (and be paid again): final.
    per_request = Counter(request.body for request in hostile.log)
    assert len(per_request) == 3 and set(per_request.values()) == {sends}
    assert [(e["type"], e["count"]) for e in shown["errors"]] == [("invalid_response", 3)]
    records = [json.loads(line) for line in flat.splitlines()]
    assert {(r["error_type"], r["http_status"], r["attempts"]) for r in records} == {
        ("invalid_response", 200, sends)
    }
    assert all(r["raw_body"] for r in records)
    # The Anthropic format knows only the API's error types.
    for line in exported.splitlines():
        result = MessageBatchIndividualResponse.model_validate_json(line).result
        assert result.type == "errored" and result.error.error.type == "api_error"
        assert "200" in result.error.error.message
