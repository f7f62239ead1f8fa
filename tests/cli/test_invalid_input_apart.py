"""Bad input lines kept by `submit --skip-invalid` are their own kind of error,
``invalid_input`` with the file:line problem as the message, apart from the API's own
``invalid_request_error`` in `status`, the report, the dashboard's cards and the flat, CSV and
Parquet exports; the Anthropic-format export keeps the API's type (the only ones its format
knows) with the file:line message."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse
from typer.testing import CliRunner

from batchrun.store.store import Store
from tests.clitools import invoke, runner
from tests.conftest import request_line

INVALID_INPUT = "invalid_input"


@pytest.fixture
def cli(db_url: str) -> CliRunner:
    return runner(db_url)


def lines(path: Path) -> None:
    """Two good requests, two the API refuses (400) and three bad lines."""
    rows = [
        json.dumps(request_line("ok-1")).encode(),
        b"{not json",
        json.dumps(request_line("refused-1", "[[sim:status=400]] x")).encode(),
        json.dumps(request_line("zero", max_tokens=0)).encode(),
        json.dumps(request_line("refused-2", "[[sim:status=400]] y")).encode(),
        json.dumps(request_line("a b")).encode(),
        json.dumps(request_line("ok-2")).encode(),
    ]
    path.write_bytes(b"\n".join(rows) + b"\n")


def test_bad_lines_are_invalid_input_everywhere_apart_from_api_errors(
    cli: CliRunner, tmp_path: Path, db_url: str
) -> None:
    path = tmp_path / "requests.jsonl"
    lines(path)
    submitted = invoke(cli, "submit", str(path), "--endpoint", "simulator", "--skip-invalid")
    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()
    assert invoke(cli, "run", batch_id).exit_code == 3

    # status: two kinds, counted apart, each with its own example.
    shown = json.loads(invoke(cli, "status", batch_id, "--json").stdout)
    errors = {error["type"]: error for error in shown["errors"]}
    assert set(errors) == {INVALID_INPUT, "invalid_request_error"}
    assert errors[INVALID_INPUT]["count"] == 3
    assert errors[INVALID_INPUT]["example"].startswith(f"{path}:")
    assert errors["invalid_request_error"]["count"] == 2
    assert not errors["invalid_request_error"]["example"].startswith(str(path))
    text = invoke(cli, "status", batch_id).stdout
    assert f"3 × {INVALID_INPUT}: " in text
    assert "2 × invalid_request_error" in text

    # flat and CSV: the stored type; the message names file:line.
    flat = [
        json.loads(row)
        for row in invoke(cli, "results", batch_id, "--format", "flat").stdout.splitlines()
    ]
    types = {row["custom_id"]: row["error_type"] for row in flat}
    assert types == {
        "ok-1": None,
        "line-2": INVALID_INPUT,
        "refused-1": "invalid_request_error",
        "zero": INVALID_INPUT,
        "refused-2": "invalid_request_error",
        "line-6": INVALID_INPUT,
        "ok-2": None,
    }
    by_id = {row["custom_id"]: row for row in flat}
    assert (
        by_id["zero"]["error_message"] == f"{path}:4: params.max_tokens is 0; it must be at least 1"
    )
    rows = list(
        csv.DictReader(io.StringIO(invoke(cli, "results", batch_id, "--format", "csv").stdout))
    )
    assert {row["custom_id"]: row["error_type"] for row in rows}["line-2"] == INVALID_INPUT

    # Parquet.
    parquet = tmp_path / "results.parquet"
    assert (
        invoke(cli, "results", batch_id, "--format", "parquet", "-o", str(parquet)).exit_code == 0
    )
    table = pq.read_table(parquet).to_pylist()
    assert {row["custom_id"]: row["error_type"] for row in table}["line-6"] == INVALID_INPUT

    # The Anthropic format: the API's own type, the file:line message; parses with the SDK.
    exported = invoke(cli, "results", batch_id).stdout.splitlines()
    parsed = {
        item.custom_id: item
        for item in map(MessageBatchIndividualResponse.model_validate_json, exported)
    }
    bad = parsed["zero"].result
    assert bad.type == "errored"
    assert bad.error.error.type == "invalid_request_error"
    assert bad.error.error.message.startswith(f"{path}:4: ")

    # The report's errors by type.
    report = tmp_path / "report.html"
    assert invoke(cli, "report", batch_id, "-o", str(report)).exit_code == 0
    page = report.read_text()
    assert INVALID_INPUT in page and f"{path}:" in page

    # The dashboard's cards: the error types they show come from this one grouped read.
    store = Store.open(db_url)
    try:
        counted = {item.error_type: item.count for item in store.timelines.error_types([batch_id])}
    finally:
        store.close()
    assert counted == {INVALID_INPUT: 3, "invalid_request_error": 2}


def test_retrying_the_errored_requests_leaves_the_bad_lines_as_they_were(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    lines(path)
    batch_id = invoke(cli, "submit", str(path), "--skip-invalid").stdout.strip()
    assert invoke(cli, "run", batch_id, "--endpoint", "simulator").exit_code == 3
    before = invoke(cli, "results", batch_id, "--format", "flat").stdout

    resumed = invoke(cli, "resume", batch_id, "--retry-errored", "--endpoint", "simulator")

    assert resumed.exit_code == 3, resumed.output
    after = invoke(cli, "results", batch_id, "--format", "flat").stdout
    bad_before = [
        row for row in map(json.loads, before.splitlines()) if row["error_type"] == INVALID_INPUT
    ]
    bad_after = [
        row for row in map(json.loads, after.splitlines()) if row["error_type"] == INVALID_INPUT
    ]
    # Nothing of a bad line can be sent ("null" stands for its params): it keeps its result.
    assert len(bad_after) == 3 and bad_after == bad_before
    refused = [
        row for row in map(json.loads, after.splitlines()) if row["custom_id"].startswith("refused")
    ]
    assert [row["attempts"] for row in refused] == [2, 2]
