"""Answers holding text no database column takes as it is: an escaped lone surrogate
(``\\ud800``) and a NUL (``\\u0000``) in a Message's text, model and stop_reason, in 400 and
500 error messages, and in a provider batch's result lines (the hostile server's ``odd_*``
and ``batch_odd`` modes). Every request is recorded once and sent once across reruns, on
SQLite and Postgres, in the real-time lane, the batch lane and under ``serve``; the
Anthropic export gives the answer back with its escapes, and every other way out (flat,
CSV, Parquet, status, the report, the dashboard's data, /metrics) reads it, with U+FFFD in
place of what UTF-8 cannot carry."""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import batchrun
from batchrun.cli.app import app
from batchrun.errors import ExitCode
from tests.clitools import batchrun as run_command
from tests.clitools import clean_env
from tests.conftest import cli_env, jsonl, request_line
from tests.hostile import ODD_TEXT, HostileServer, running_hostile_server
from tests.server.serving import KEY_A, running_server, server_env

KEY = "sk-hostile-odd-text-key-99887766"
# What leaves as UTF-8 text in place of ODD_TEXT: each character no column takes is U+FFFD.
SAFE_TEXT = "\ufffd and \ufffd end"
REQUESTS = 200
WAIT_S = 60.0


def mode_of(index: int) -> str:
    """10 % of the answers are 200s with the odd text, 5 % 400s carrying it; a few put it in
    the model and stop_reason too, in a streamed answer, or in a 500 (retried, then final)."""
    if index % 50 == 21:
        return "sse_odd"
    if index % 10 == 3:
        return "odd_fields" if index % 40 == 3 else "odd_text"
    if index % 20 == 7:
        return "odd_400"
    if index in (11, 111):
        return "odd_500"
    return "normal"


def request_lines(count: int = REQUESTS) -> list[dict[str, Any]]:
    # 32,000 max_tokens: streamed, by the SDK's rule.
    return [
        request_line(
            f"r{i}",
            f"q{i} <<hostile:{mode_of(i)}>>",
            max_tokens=32_000 if mode_of(i) == "sse_odd" else 256,
        )
        for i in range(count)
    ]


def sends(server: HostileServer) -> Counter[str]:
    """Messages requests the server received, by custom_id (from the prompt's number)."""
    found: Counter[str] = Counter()
    for request in server.log:
        body = json.loads(request.body or b"{}")
        if "messages" in body:
            found["r" + body["messages"][0]["content"].split()[0][1:]] += 1
    return found


def config_file(tmp_path: Path, server: HostileServer) -> Path:
    config = tmp_path / "batchrun.toml"
    config.write_text(
        f'[endpoints.hostile]\nbase_url = "{server.url}"\nauth = "x-api-key"\n'
        'api_key_env = "HOSTILE_KEY"\ntimeout_s = 5\nmax_attempts = 2\nbatch_api = "anthropic"\n'
    )
    return config


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with running_hostile_server() as server:
        yield server


@pytest.fixture
def client(db_url: str, tmp_path: Path, hostile: HostileServer) -> Iterator[batchrun.Client]:
    env = {"HOME": str(tmp_path), "HOSTILE_KEY": KEY}
    with batchrun.Client(
        db_url, config=config_file(tmp_path, hostile), env=env, cwd=tmp_path
    ) as opened:
        yield opened


def exported(client: batchrun.Client, batch_id: str, tmp_path: Path) -> dict[str, Any]:
    """The batch in every export format, read back: by format, the rows by custom_id."""
    found: dict[str, Any] = {}
    for name in ("anthropic", "flat", "csv", "parquet"):
        path = tmp_path / f"export.{name}"
        client.export(batch_id, path, format=name)
        if name == "parquet":
            rows = pq.read_table(path).to_pylist()
        elif name == "csv":
            rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        else:
            text = path.read_text(encoding="utf-8")
            if name == "anthropic":
                # The escapes the server sent, as sent: ASCII on the way out.
                assert "\\ud800" in text and "\\u0000" in text
            rows = [json.loads(line) for line in text.splitlines()]
        found[name] = {row["custom_id"]: row for row in rows}
    return found


def check_exports(found: dict[str, Any], expected: dict[str, str]) -> None:
    """Each export holds every request, with the odd text where it was: exact in the
    Anthropic format, U+FFFD in place of the surrogate and the NUL in the flat ones."""
    for name, rows in found.items():
        assert set(rows) == set(expected), name
    for custom_id, mode in expected.items():
        line = found["anthropic"][custom_id]["result"]
        flat = found["flat"][custom_id]
        if mode in ("odd_text", "odd_fields", "sse_odd"):
            assert line["message"]["content"][0]["text"] == ODD_TEXT
            for name in ("flat", "csv", "parquet"):
                assert found[name][custom_id]["text"] == SAFE_TEXT, (name, custom_id)
        if mode == "odd_fields":
            assert line["message"]["model"] == "claude-haiku-4-5" + ODD_TEXT
            assert flat["model"] == "claude-haiku-4-5" + SAFE_TEXT
        if mode in ("odd_fields", "sse_odd"):
            assert line["message"]["stop_reason"] == "end_turn" + ODD_TEXT
            assert flat["stop_reason"] == "end_turn" + SAFE_TEXT
        if mode in ("odd_400", "odd_500"):
            # A 500's message is said after the retries it took ("gave up after 2 attempts").
            assert line["error"]["error"]["message"].endswith("bad" + ODD_TEXT)
            for name in ("flat", "csv", "parquet"):
                message = found[name][custom_id]["error_message"]
                assert message.endswith("bad" + SAFE_TEXT), (name, custom_id)


def check_pages(client: batchrun.Client, batch_id: str, db_url: str, home: Path) -> None:
    """status (the API's and the command's), the report's data and its page read the
    batch."""
    status = client.status(batch_id)
    assert status.request_counts.processing == 0
    page = client.report_html(batch_id)
    page.encode("utf-8")
    assert batch_id in page
    shown = CliRunner(env=cli_env(db_url, home)).invoke(app, ["status", batch_id])
    assert shown.exit_code == 0, shown.output
    assert "bad\ufffd and \ufffd end" in shown.stdout


def check_served_views(base: str, headers: dict[str, str], batch_id: str) -> None:
    """The dashboard's data (list and batch) and /metrics of a server over the database."""
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        listed = http.get("/dashboard/api/batches")
        one = http.get(f"/dashboard/api/batches/{batch_id}")
        metrics = http.get("/metrics")
    assert listed.status_code == 200, listed.text
    assert batch_id in [batch["id"] for batch in listed.json()["batches"]]
    assert one.status_code == 200, one.text
    assert one.json()["batch"]["id"] == batch_id
    assert metrics.status_code == 200, metrics.text
    assert "batchrun_requests" in metrics.text


def test_odd_answers_in_real_time_are_recorded_once_sent_once_and_read_everywhere(
    client: batchrun.Client, hostile: HostileServer, db_url: str, tmp_path: Path
) -> None:
    batch = client.submit(request_lines(), endpoint="hostile")

    first = client.run(batch.id, stop_on_signals=False)
    reruns = [client.run(batch.id, stop_on_signals=False) for _ in range(2)]

    assert first.exit_code == ExitCode.ERRORED_RESULTS
    assert [rerun.exit_code for rerun in reruns] == [ExitCode.OK] * 2
    expected = {f"r{i}": mode_of(i) for i in range(REQUESTS)}
    # One send each; the two 500s are retried once (max_attempts = 2), never again after.
    assert sends(hostile) == {
        custom_id: 2 if mode == "odd_500" else 1 for custom_id, mode in expected.items()
    }
    counts = client.status(batch.id).request_counts
    errored = sum(mode in ("odd_400", "odd_500") for mode in expected.values())
    assert (counts.succeeded, counts.errored, counts.processing) == (
        REQUESTS - errored,
        errored,
        0,
    )
    check_exports(exported(client, batch.id, tmp_path), expected)
    check_pages(client, batch.id, db_url, tmp_path)
    home = tmp_path / "served"
    home.mkdir()
    with running_server(db_url, {"HOME": str(home)}, insecure_no_auth=True, workers=0) as (
        base,
        _,
    ):
        check_served_views(base, {}, batch.id)


def test_odd_result_lines_of_a_provider_batch_are_imported_once(
    client: batchrun.Client, hostile: HostileServer, db_url: str, tmp_path: Path
) -> None:
    lines = [request_line(f"r{i}", f"q{i} <<hostile:batch_odd>>") for i in range(9)]
    batch = client.submit(lines, endpoint="hostile", lane="batch")

    first = client.run(batch.id, stop_on_signals=False, poll_interval_s=0.2)
    rerun = client.run(batch.id, stop_on_signals=False, poll_interval_s=0.2)

    assert first.exit_code == ExitCode.ERRORED_RESULTS
    assert rerun.exit_code == ExitCode.OK
    creates = [request for request in hostile.log if b'"requests"' in request.body]
    assert len(creates) == 1
    assert sends(hostile) == Counter(), "nothing went to the real-time lane"
    # The hostile batch's lines: every third a Message with the odd text in its text, model
    # and stop_reason, every third an error carrying it (final), the others plain.
    expected = {f"r{i}": ("odd_fields", "odd_400", "normal")[i % 3] for i in range(len(lines))}
    counts = client.status(batch.id).request_counts
    assert (counts.succeeded, counts.errored, counts.processing) == (6, 3, 0)
    check_exports(exported(client, batch.id, tmp_path), expected)
    check_pages(client, batch.id, db_url, tmp_path)


def test_odd_answers_under_serve_are_recorded_once_and_served(
    db_url: str, tmp_path: Path, hostile: HostileServer
) -> None:
    config = config_file(tmp_path, hostile)
    env = server_env(tmp_path) | {"HOSTILE_KEY": KEY}
    count = 60
    expected = {f"r{i}": mode_of(i) for i in range(count)}
    headers = {"x-api-key": KEY_A}
    with running_server(db_url, env, endpoint="hostile", config=config) as (base, _):
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            created = http.post(
                "/v1/messages/batches", json={"requests": request_lines(count)}
            ).json()
            deadline = time.monotonic() + WAIT_S
            while True:
                batch = http.get(f"/v1/messages/batches/{created['id']}").json()
                if batch["processing_status"] == "ended":
                    break
                assert time.monotonic() < deadline, batch
                time.sleep(0.2)
            results = http.get(f"/v1/messages/batches/{created['id']}/results")
        check_served_views(base, headers, created["id"])

    assert sends(hostile) == {
        custom_id: 2 if mode == "odd_500" else 1 for custom_id, mode in expected.items()
    }
    assert results.status_code == 200
    lines = {
        item["custom_id"]: item["result"] for item in map(json.loads, results.text.splitlines())
    }
    assert set(lines) == set(expected)
    assert lines["r3"]["message"]["content"][0]["text"] == ODD_TEXT
    assert lines["r7"]["error"]["error"]["message"] == "bad" + ODD_TEXT
    with batchrun.Client(db_url, config=config, env=env, cwd=tmp_path) as client:
        check_exports(exported(client, created["id"], tmp_path), expected)
        check_pages(client, created["id"], db_url, tmp_path)


def test_a_pause_for_a_message_holding_odd_text_is_printed_as_text(
    hostile: HostileServer, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'batchrun.db'}"
    env = clean_env(
        db_url,
        HOME=str(tmp_path),
        HOSTILE_KEY=KEY,
        BATCHRUN_CONFIG=str(config_file(tmp_path, hostile)),
    )
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(jsonl([request_line("r0", "q0 <<hostile:odd_402>>")]))
    batch_id = run_command("submit", str(requests), "--endpoint", "hostile", env=env).stdout

    ran = run_command("run", "-q", batch_id.strip(), env=env)

    assert ran.returncode == ExitCode.PAUSED, ran.stderr
    assert "billing reasons: bad\ufffd and \ufffd end" in ran.stderr
    assert "\x00" not in ran.stderr and "\\ud800" not in ran.stderr
