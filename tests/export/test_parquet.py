"""`results --format parquet`: the flat columns with their types, read back by DuckDB and
pyarrow, written in row groups, atomically, and refused clearly without pyarrow or -o."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Iterator
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

import batchrun
from batchrun.cli.app import app
from batchrun.export.flat import COLUMNS
from batchrun.export.formats import EXPORT_FORMATS, ExportFormat
from batchrun.export.parquet import write_parquet
from tests.clitools import batchrun as batchrun_command
from tests.clitools import clean_env
from tests.conftest import cli_env, request_line

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "requests.jsonl"
# What DuckDB calls each column's type: the contract with the readers.
DUCKDB_TYPES = {
    "line": "BIGINT",
    "input_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "cache_creation_input_tokens": "BIGINT",
    "cache_read_input_tokens": "BIGINT",
    "cache_creation_1h_input_tokens": "BIGINT",
    "cost_usd": "DOUBLE",
    "cost_usd_exact": "DECIMAL(18,8)",
    "attempts": "BIGINT",
    "repair_sends": "BIGINT",
    "latency_ms": "BIGINT",
    "http_status": "BIGINT",
    "created_at": "TIMESTAMP WITH TIME ZONE",
    "started_at": "TIMESTAMP WITH TIME ZONE",
    "completed_at": "TIMESTAMP WITH TIME ZONE",
    "reused": "BOOLEAN",
    "cache_hit_rate": "DOUBLE",
    "cache_saved_usd": "DOUBLE",
}


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[batchrun.Client]:
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def _finished_batch(client: batchrun.Client) -> str:
    """A batch run to the end: the samples (replies, a tool_use) and an errored request."""
    lines = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    lines.append(request_line("bad", "[[sim:status=400]] no"))
    batch = client.submit(lines, endpoint="simulator")
    client.run(batch.id, stop_on_signals=False)
    return batch.id


def _as_flat(record: dict[str, Any]) -> dict[str, Any]:
    """A row read from Parquet, spelled as the flat JSON export spells it."""
    spelled = dict(record)
    for column in ("created_at", "started_at", "completed_at"):
        if spelled[column] is not None:
            spelled[column] = (
                spelled[column].astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
            )
    if isinstance(spelled["cost_usd_exact"], Decimal):
        spelled["cost_usd_exact"] = f"{spelled['cost_usd_exact']:f}"
    spelled["tool_use"] = json.loads(spelled["tool_use"]) if spelled["tool_use"] else []
    return spelled


def test_parquet_has_the_flat_columns_typed_and_the_flat_values(
    client: batchrun.Client, tmp_path: Path
) -> None:
    batch_id = _finished_batch(client)
    target = tmp_path / "out.parquet"
    flat = io.StringIO()

    count = client.export(batch_id, target, format="parquet")
    client.export(batch_id, flat, format="flat")

    described = duckdb.sql(f"DESCRIBE SELECT * FROM '{target}'").fetchall()
    assert [name for name, *_ in described] == list(COLUMNS)
    assert {name: kind for name, kind, *_ in described} == {
        name: DUCKDB_TYPES.get(name, "VARCHAR") for name in COLUMNS
    }
    rows = duckdb.sql(f"SELECT * FROM '{target}'")
    read = [_as_flat(dict(zip(COLUMNS, row, strict=True))) for row in rows.fetchall()]
    expected = [json.loads(line) for line in flat.getvalue().splitlines()]
    assert count == len(expected) == 7
    assert read == expected
    assert {row["status"] for row in read} == {"succeeded", "errored"}
    # Exact costs add up exactly in SQL, and the errored row's usage is null, not 0.
    ((total, unpriced),) = duckdb.sql(
        f"SELECT sum(cost_usd_exact), count(*) FILTER (cost_usd IS NULL) FROM '{target}'"
    ).fetchall()
    exact = [Decimal(r["cost_usd_exact"]) for r in expected if r["cost_usd_exact"]]
    assert total == sum(exact)
    assert exact == [Decimal(repr(r["cost_usd"])) for r in expected if r["cost_usd"]]
    assert unpriced == 1


def test_parquet_cost_is_a_float_to_compute_with_beside_the_exact_decimal(
    client: batchrun.Client, tmp_path: Path
) -> None:
    batch_id = _finished_batch(client)
    target = tmp_path / "out.parquet"

    client.export(batch_id, target, format="parquet")

    table = pq.read_table(target)
    assert str(table.schema.field("cost_usd").type) == "double"
    assert str(table.schema.field("cost_usd_exact").type) == "decimal128(18, 8)"
    floats = table.column("cost_usd").to_pylist()
    exact = table.column("cost_usd_exact").to_pylist()
    assert all(isinstance(value, float) for value in floats if value is not None)
    # What pandas does with the column (`frame.cost_usd * 1.1`), pyarrow does here.
    raised = pc.multiply(table.column("cost_usd"), 1.1).to_pylist()
    assert [value for value in raised if value is not None] == pytest.approx(
        [value * 1.1 for value in floats if value is not None]
    )
    assert [None if v is None else float(v) for v in exact] == floats


def test_a_bad_input_line_names_no_model_in_the_exports(
    client: batchrun.Client, tmp_path: Path
) -> None:
    lines: list[Any] = [request_line("good"), {"custom_id": "bad", "params": {"max_tokens": 5}}]
    batch = client.submit(lines, endpoint="simulator", skip_invalid=True)
    client.run(batch.id, stop_on_signals=False)
    flat = io.StringIO()

    client.export(batch.id, flat, format="flat")
    client.export(batch.id, tmp_path / "out.parquet", format="parquet")

    models = {
        row["custom_id"]: row["model"] for row in map(json.loads, flat.getvalue().split("\n")[:-1])
    }
    assert models == {"good": "claude-sonnet-4-5", "bad": None}
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert {row["custom_id"]: row["model"] for row in table} == models
    ((nulls,),) = duckdb.sql(
        f"SELECT count(*) FROM '{tmp_path / 'out.parquet'}' WHERE model IS NULL"
    ).fetchall()
    assert nulls == 1


def test_parquet_rows_are_written_in_row_groups(tmp_path: Path) -> None:
    small_groups = ExportFormat(
        "parquet-2",
        "parquet, 2 rows per group",
        functools.partial(write_parquet, row_group_rows=2),
        binary=True,
    )
    with batchrun.Client(
        f"sqlite:///{tmp_path / 'x.db'}", env={"HOME": str(tmp_path)}, cwd=tmp_path
    ) as client:
        batch_id = _finished_batch(client)
        with EXPORT_FORMATS.registered(small_groups):
            client.export(batch_id, tmp_path / "out.parquet", format="parquet-2")

    written = pq.ParquetFile(tmp_path / "out.parquet")
    assert written.metadata.num_rows == 7
    assert written.num_row_groups == 4
    assert [written.metadata.row_group(i).num_rows for i in range(4)] == [2, 2, 2, 1]


def test_an_empty_export_is_a_parquet_file_with_the_columns(tmp_path: Path) -> None:
    with batchrun.Client(
        f"sqlite:///{tmp_path / 'x.db'}", env={"HOME": str(tmp_path)}, cwd=tmp_path
    ) as client:
        batch = client.submit([request_line("a")], endpoint="simulator")
        client.run(batch.id, stop_on_signals=False)
        count = client.export(batch.id, tmp_path / "none.parquet", format="parquet", only="expired")

    assert count == 0
    assert pq.read_table(tmp_path / "none.parquet").column_names == list(COLUMNS)


def test_a_parquet_export_that_fails_midway_leaves_the_old_file(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'x.db'}"
    one_per_group = ExportFormat(
        "parquet-1",
        "parquet, 1 row per group",
        functools.partial(write_parquet, row_group_rows=1),
        binary=True,
    )
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as client:
        batch_id = _finished_batch(client)
        engine = create_engine(db_url)
        with engine.begin() as connection:
            connection.execute(text("UPDATE results SET body = 'x' WHERE custom_id = 'image-005'"))
        engine.dispose()
        target = tmp_path / "out.parquet"
        target.write_bytes(b"the previous export")
        with (
            EXPORT_FORMATS.registered(one_per_group),
            pytest.raises(batchrun.BatchrunError, match="image-005"),
        ):
            # Four rows are written, in groups of their own, before the damaged fifth.
            client.export(batch_id, target, format="parquet-1")

    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir() if "out.parquet" in p.name) == ["out.parquet"]


@pytest.mark.parametrize("output", [[], ["-o", "-"]], ids=["no -o", "-o -"])
def test_parquet_is_not_written_to_standard_output(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cli = CliRunner(env=cli_env(sqlite_url, tmp_path / "home"))
    batch_id = cli.invoke(app, ["submit", str(SAMPLES), "--endpoint", "simulator"]).stdout.strip()

    result = cli.invoke(app, ["results", batch_id, "--partial", "--format", "parquet", *output])

    assert result.exit_code == 2
    # The message is in a box, wrapped to the terminal's width.
    message = " ".join(result.stderr.replace("│", " ").split())
    assert "--format parquet writes a binary file; pass -o FILE" in message
    assert result.stdout == ""


def test_without_pyarrow_parquet_says_how_to_install_it(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'x.db'}"
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as client:
        batch = client.submit([request_line("a")], endpoint="simulator")
        client.run(batch.id, stop_on_signals=False)
    # A pyarrow that is not there: the first entry of the path answers `import pyarrow`
    # as Python does when no such package is installed.
    absent = tmp_path / "no_pyarrow" / "pyarrow"
    absent.mkdir(parents=True)
    (absent / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pyarrow'\", name='pyarrow')\n"
    )
    env = clean_env(db_url, PYTHONPATH=str(absent.parent), HOME=str(tmp_path))
    target = tmp_path / "out.parquet"

    ran = batchrun_command("results", batch.id, "--format", "parquet", "-o", str(target), env=env)

    assert ran.returncode == 1
    assert ran.stderr.strip() == (
        "error: --format parquet needs pyarrow: pip install pyarrow (or 'batchrun-llm[parquet]')"
    )
    assert [p.name for p in tmp_path.iterdir() if "out.parquet" in p.name] == []
