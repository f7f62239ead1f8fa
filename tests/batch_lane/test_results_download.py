"""A provider batch's results, as a hostile provider serves them: a results_url on another
origin, redirects, a success far after an error for the same request, and downloads that
never end. Two real servers on 127.0.0.1 (the endpoint's, and a foreign one that records
what reaches it): no credential ever reaches another origin, every result is imported,
nothing is sent twice, and no download runs for ever."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from tests.cli.test_run_endpoints import invoke
from tests.conftest import cli_env, jsonl, request_line
from tests.hostile import COOKIE, HostileServer, running_hostile_server

KEY = "sk-hostile-results-key-0123456789"
TOKEN = "gateway-token-abcdefghij"


@pytest.fixture
def cli(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    env = cli_env(db_url, tmp_path / "home") | {"HOSTILE_KEY": KEY, "GATEWAY_TOKEN": TOKEN}
    yield CliRunner(env=env)


@pytest.fixture
def foreign() -> Iterator[HostileServer]:
    with running_hostile_server() as running:
        yield running


@pytest.fixture
def server(foreign: HostileServer) -> Iterator[HostileServer]:
    with running_hostile_server() as running:
        running.elsewhere = foreign.url
        yield running


def configure(tmp_path: Path, server: HostileServer, extra: str = "") -> None:
    (tmp_path / "batchrun.toml").write_text(
        f'[endpoints.hostile]\nbase_url = "{server.url}"\napi_key_env = "HOSTILE_KEY"\n'
        f'batch_api = "anthropic"\ntimeout_s = 5\n{extra}'
        '[endpoints.hostile.headers_env]\nx-gateway-token = "GATEWAY_TOKEN"\n'
    )


def submit(cli: CliRunner, tmp_path: Path, mode: str, count: int = 5) -> str:
    lines = [request_line(f"r{i}", f"<<hostile:{mode}>> q{i}") for i in range(count)]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines))
    result = invoke(cli, "submit", str(path), "--endpoint", "hostile", "--lane", "batch")
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def statuses(cli: CliRunner, batch_id: str) -> Counter[str]:
    out = invoke(cli, "results", batch_id, "--format", "flat", "--partial").stdout
    return Counter(json.loads(line)["status"] for line in out.splitlines())


def messages_sent(server: HostileServer) -> int:
    """Requests that reached the Messages API (real time), not the batch API."""
    return sum(1 for request in server.log if b'"requests"' not in request.body and request.body)


def credentials_in(server: HostileServer) -> list[str]:
    """Every credential (key, headers_env value, cookie) found in what reached ``server``."""
    found = []
    for request in server.log:
        seen = json.dumps(request.headers) + request.body.decode(errors="replace")
        found += [secret for secret in (KEY, TOKEN, COOKIE) if secret in seen]
        found += ["cookie header"] if "cookie" in request.headers else []
    return found


def test_a_results_url_on_another_origin_is_never_asked_and_every_result_is_imported(
    cli: CliRunner,
    tmp_path: Path,
    server: HostileServer,
    foreign: HostileServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure(tmp_path, server)
    batch_id = submit(cli, tmp_path, "batch_foreign_url")

    with caplog.at_level(logging.WARNING, logger="batchrun.transport.batch_api"):
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")

    assert ran.exit_code == 0, ran.output
    assert statuses(cli, batch_id) == {"succeeded": 5}
    assert foreign.log == [], "nothing at all goes to the other origin"
    told = [r.getMessage() for r in caplog.records if "another origin" in r.getMessage()]
    assert len(told) == 1
    assert "127.0.0.1" in told[0] and "foreign-signature" not in told[0]
    assert messages_sent(server) == 0


def test_results_redirected_to_another_origin_are_fetched_without_any_credential(
    cli: CliRunner, tmp_path: Path, server: HostileServer, foreign: HostileServer
) -> None:
    configure(tmp_path, server)
    foreign.batch_mode, foreign.batch_ids = "batch_plain", [f"r{i}" for i in range(5)]
    batch_id = submit(cli, tmp_path, "batch_redirect_foreign")

    ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")

    assert ran.exit_code == 0, ran.output
    assert statuses(cli, batch_id) == {"succeeded": 5}
    assert len(foreign.log) == 1, "the redirect was followed once"
    assert credentials_in(foreign) == []
    # The endpoint's own origin got its credentials (and its cookie back) as always.
    assert KEY in json.dumps(server.log[-1].headers)
    assert TOKEN in json.dumps(server.log[-1].headers)


def test_results_redirected_within_the_endpoints_origin_keep_the_credentials(
    cli: CliRunner, tmp_path: Path, server: HostileServer, foreign: HostileServer
) -> None:
    configure(tmp_path, server)
    batch_id = submit(cli, tmp_path, "batch_redirect_same")

    ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")

    assert ran.exit_code == 0, ran.output
    assert statuses(cli, batch_id) == {"succeeded": 5}
    moved = [r for r in server.log if KEY in json.dumps(r.headers)]
    assert len(moved) == len(server.log)
    assert foreign.log == []


@pytest.mark.parametrize("status", [404, 401, 403])
def test_an_ended_batch_whose_endpoint_does_not_serve_its_results_pauses_sending_nothing_again(
    cli: CliRunner, tmp_path: Path, server: HostileServer, foreign: HostileServer, status: int
) -> None:
    # Its results_url names another origin, and the endpoint's own results path refuses
    # (not found, or the key may not read them): the provider said the batch ended, so its
    # requests may have been billed.
    server.own_results_status = status
    configure(tmp_path, server)
    batch_id = submit(cli, tmp_path, "batch_foreign_no_own")

    ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")

    assert ran.exit_code == 4, ran.output
    assert "did not give its results" in ran.stderr and f"HTTP {status}" in ran.stderr
    assert foreign.log == []
    assert sum(1 for r in server.log if b'"requests"' in r.body) == 1, "created once"
    assert messages_sent(server) == 0
    assert statuses(cli, batch_id) == {}


def test_a_success_far_after_an_error_for_the_same_request_wins_and_nothing_is_sent_twice(
    cli: CliRunner, tmp_path: Path, server: HostileServer
) -> None:
    # r0 fails with a transient error and r1 with a final one on the first lines; both
    # succeed on the last two of 1,202 lines (more than an import chunk of 1,000 later).
    configure(tmp_path, server)
    batch_id = submit(cli, tmp_path, "batch_far_duplicates", count=1200)

    ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")

    assert ran.exit_code == 0, ran.output
    assert statuses(cli, batch_id) == {"succeeded": 1200}
    assert messages_sent(server) == 0, "nothing is sent again in real time"


def test_an_endless_results_download_ends_at_its_size_bound_keeping_what_it_read(
    cli: CliRunner, tmp_path: Path, server: HostileServer, db_url: str
) -> None:
    configure(tmp_path, server, "batch_results_max_bytes = 2000000\n")
    batch_id = submit(cli, tmp_path, "batch_endless")

    started = time.monotonic()
    ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")

    assert time.monotonic() - started < 30
    assert ran.exit_code == 4, ran.output  # paused: a person decides
    assert "batch_results_max_bytes" in ran.stderr
    assert "5 results read before were imported" in ran.stderr
    assert statuses(cli, batch_id) == {"succeeded": 5}
    assert messages_sent(server) == 0
    assert KEY not in ran.output


def test_a_trickling_results_download_ends_at_its_time_bound_keeping_what_it_read(
    cli: CliRunner, tmp_path: Path, server: HostileServer, db_url: str
) -> None:
    server.drip_interval_s = 0.2
    configure(tmp_path, server, "batch_results_max_s = 2\n")
    batch_id = submit(cli, tmp_path, "batch_trickle")

    started = time.monotonic()
    ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
    took_s = time.monotonic() - started

    assert 2 <= took_s < 20
    assert ran.exit_code == 4, ran.output
    assert "batch_results_max_s" in ran.stderr
    # The four complete lines are in; the fifth never ended, so its request is still held
    # by the provider batch (never sent again in real time), and the next run reads again.
    assert statuses(cli, batch_id) == {"succeeded": 4}
    assert messages_sent(server) == 0
    engine = create_engine(db_url)
    with engine.connect() as conn:
        held = conn.execute(text("SELECT count(*) FROM requests WHERE state = 'provider'"))
        assert held.scalar_one() == 1
    engine.dispose()
