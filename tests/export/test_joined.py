"""`results --with-input`: the results of a batch submitted from a table joined to its rows,
one row per input row in input order, as Parquet (typed from the schema), CSV and flat JSON
lines, read back with pyarrow, the csv module and json; the simulator answers (a share of
them invalid) and a real database on both backends."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from tests.clitools import invoke
from tests.conftest import cli_env, jsonl, request_line

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["category", "priority", "summary", "tags", "origin"],
    "additionalProperties": False,
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "account", "other"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 80},
        "tags": {"type": "array", "items": {"type": "string"}},
        "origin": {
            "type": "object",
            "required": ["channel", "score"],
            "additionalProperties": False,
            "properties": {
                "channel": {"type": "string", "enum": ["mail", "phone"]},
                "score": {"type": "number"},
            },
        },
    },
}
TEMPLATE = """\
model = "claude-sonnet-4-5"
max_tokens = 400
system = "You triage support tickets. [[sim:invalid_output=0.3]]"
user = "Ticket {{ ticket_id }}: {{ subject }}"
id = "t-{{ ticket_id }}"
"""
HEADER = ["ticket_id", "subject", "note"]


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)  # no config file of the machine may be found
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def tickets(count: int) -> list[dict[str, str]]:
    # Ids out of sorted order, so input order is not an accident of sorting.
    return [
        {
            "ticket_id": str(9000 - 7 * n),
            "subject": f"Subject {n}",
            "note": ["", "-1", "=SUM(A1)"][n % 3],
        }
        for n in range(count)
    ]


def write_csv(path: Path, rows: list[dict[str, str]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def submit_and_run(cli: CliRunner, tmp_path: Path, table: Path, template: str = TEMPLATE) -> str:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "t.toml").write_text(template)
    submitted = invoke(
        cli,
        "submit",
        str(table),
        "--template",
        str(tmp_path / "t.toml"),
        "--schema",
        str(tmp_path / "schema.json"),
        "--endpoint",
        "simulator",
        # No repairs: the answers that do not match stay as the model sent them, so the
        # export's columns for them are seen.
        "--repair",
        "0",
    )
    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()
    ran = invoke(cli, "run", batch_id)
    # 3: some requests ended errored (invalid_output).
    assert ran.exit_code in (0, 3), ran.output
    return batch_id


def export(cli: CliRunner, batch_id: str, path: Path, fmt: str, *more: str) -> None:
    done = invoke(cli, "results", batch_id, "--with-input", "--format", fmt, "-o", str(path), *more)
    assert done.exit_code == 0, done.output
    assert "rows to" in done.stderr


def valid_answer(text: str | None) -> dict[str, Any] | None:
    """The oracle: the reply's text parsed and checked against SCHEMA here, by jsonschema."""
    try:
        value = json.loads(text or "")
    except ValueError:
        return None
    return value if Draft202012Validator(SCHEMA).is_valid(value) else None


def test_joined_parquet_csv_and_json_lines_hold_every_row_in_input_order_with_typed_answers(
    cli: CliRunner, tmp_path: Path
) -> None:
    rows = tickets(45)
    batch_id = submit_and_run(cli, tmp_path, write_csv(tmp_path / "tickets.csv", rows))
    export(cli, batch_id, tmp_path / "j.parquet", "parquet")
    export(cli, batch_id, tmp_path / "j.csv", "csv", "--csv-raw")
    export(cli, batch_id, tmp_path / "j.jsonl", "flat")
    flat = invoke(cli, "results", batch_id, "--format", "flat")

    table = pq.read_table(tmp_path / "j.parquet")
    schema = table.schema
    assert schema.names == [
        *HEADER,
        "custom_id",
        "result_type",
        "error_type",
        "error_message",
        "text",
        "answer",
        "answer_category",
        "answer_priority",
        "answer_summary",
        "answer_tags",
        "answer_origin",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cost_usd",
        "repair_sends",
    ]
    assert schema.field("answer_category").type == pa.string()
    assert schema.field("answer_priority").type == pa.int64()
    assert schema.field("answer_tags").type == pa.list_(pa.string())
    assert schema.field("answer_origin").type == pa.struct(
        [pa.field("channel", pa.string()), pa.field("score", pa.float64())]
    )
    assert schema.field("cost_usd").type == pa.float64()
    assert schema.field("repair_sends").type == pa.int64()
    assert schema.field("ticket_id").type == pa.string()  # a CSV's cells are text, unchanged
    joined = table.to_pylist()
    assert [{c: r[c] for c in HEADER} for r in joined] == rows
    assert [r["custom_id"] for r in joined] == [f"t-{row['ticket_id']}" for row in rows]
    flat_by_id = {line["custom_id"]: line for line in map(json.loads, flat.stdout.splitlines())}
    invalid = 0
    for record in joined:
        expected = valid_answer(record["text"])
        source = flat_by_id[record["custom_id"]]
        assert record["result_type"] == ("errored" if expected is None else "succeeded")
        assert (record["text"], record["cost_usd"], record["output_tokens"]) == (
            source["text"],
            source["cost_usd"],
            source["output_tokens"],
        )
        if expected is None:
            invalid += 1
            assert record["error_type"] == "invalid_output" and record["error_message"]
            assert record["answer"] is None and record["answer_priority"] is None
            assert record["answer_origin"] is None
        else:
            assert record["error_type"] is None and json.loads(record["answer"]) == expected
            assert record["answer_category"] == expected["category"]
            assert record["answer_priority"] == expected["priority"]
            assert record["answer_tags"] == expected["tags"]
            assert record["answer_origin"] == expected["origin"]
    # 45 draws at 30 %: far outside 3..25 is a broken share or a broken check, not chance.
    assert 3 <= invalid <= 25

    lines = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert list(lines[0]) == schema.names
    for line, record in zip(lines, joined, strict=True):
        assert line["answer"] == (
            None if record["answer"] is None else json.loads(record["answer"])
        )
        same = [*HEADER, "custom_id", "answer_tags", "answer_origin"]
        assert {k: line[k] for k in same} == {k: record[k] for k in same}

    with (tmp_path / "j.csv").open(newline="", encoding="utf-8") as stream:
        cells = list(csv.reader(stream))
    assert cells[0] == schema.names and len(cells) == len(rows) + 1
    for line, record in zip(cells[1:], joined, strict=True):
        by_name = dict(zip(cells[0], line, strict=True))
        assert [by_name[c] for c in HEADER] == [record[c] for c in HEADER]
        assert by_name["answer_priority"] == (
            "" if record["answer_priority"] is None else str(record["answer_priority"])
        )
        tags = record["answer_tags"]
        assert (json.loads(by_name["answer_tags"]) if by_name["answer_tags"] else None) == tags


def test_csv_neutralises_formulas_in_input_cells_unless_raw(cli: CliRunner, tmp_path: Path) -> None:
    batch_id = submit_and_run(cli, tmp_path, write_csv(tmp_path / "t.csv", tickets(3)))
    export(cli, batch_id, tmp_path / "safe.csv", "csv")
    export(cli, batch_id, tmp_path / "raw.csv", "csv", "--csv-raw")

    def notes(name: str) -> list[str]:
        with (tmp_path / name).open(newline="") as stream:
            return [row["note"] for row in csv.DictReader(stream)]

    assert notes("safe.csv") == ["", "-1", "'=SUM(A1)"]
    assert notes("raw.csv") == ["", "-1", "=SUM(A1)"]


def test_result_columns_that_an_input_column_already_names_are_prefixed(
    cli: CliRunner, tmp_path: Path
) -> None:
    header = ["ticket_id", "subject", "text", "answer_priority", "custom_id", "_text"]
    rows = [
        {
            "ticket_id": str(n),
            "subject": "s",
            "text": f"mine {n}",
            "answer_priority": "high",
            "custom_id": "c",
            "_text": "also mine",
        }
        for n in range(4)
    ]
    batch_id = submit_and_run(cli, tmp_path, write_csv(tmp_path / "t.csv", rows, header))
    export(cli, batch_id, tmp_path / "j.parquet", "parquet")

    table = pq.read_table(tmp_path / "j.parquet")
    names = table.schema.names
    assert names[: len(header)] == header
    assert {"__text", "_answer_priority", "_custom_id"} <= set(names)
    assert "text" not in names[len(header) :] and len(set(names)) == len(names)
    joined = table.to_pylist()
    assert [{c: r[c] for c in header} for r in joined] == rows
    assert [r["_custom_id"] for r in joined] == [f"t-{n}" for n in range(4)]
    for record in joined:
        expected = valid_answer(record["__text"])
        assert record["_answer_priority"] == (None if expected is None else expected["priority"])


def test_json_lines_input_keeps_its_types_and_mixed_columns_become_text(
    cli: CliRunner, tmp_path: Path
) -> None:
    rows = [
        {
            "ticket_id": 1,
            "subject": "a",
            "weight": 1.5,
            "vip": True,
            "meta": {"k": [1]},
            "mixed": 1,
        },
        {"ticket_id": 2, "subject": "b", "weight": 2, "vip": False, "meta": None, "mixed": "x"},
        {"ticket_id": 3, "subject": "c", "vip": None, "mixed": None},
    ]
    table_path = tmp_path / "t.jsonl"
    table_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    batch_id = submit_and_run(cli, tmp_path, table_path)
    export(cli, batch_id, tmp_path / "j.parquet", "parquet")
    export(cli, batch_id, tmp_path / "j.jsonl", "flat")

    table = pq.read_table(tmp_path / "j.parquet")
    types = {name: table.schema.field(name).type for name in list(rows[0])}
    assert types == {
        "ticket_id": pa.int64(),
        "subject": pa.string(),
        "weight": pa.float64(),
        "vip": pa.bool_(),
        "meta": pa.string(),
        "mixed": pa.string(),
    }
    got = table.select(list(rows[0])).to_pylist()
    assert got == [
        {
            "ticket_id": 1,
            "subject": "a",
            "weight": 1.5,
            "vip": True,
            "meta": '{"k":[1]}',
            "mixed": "1",
        },
        {"ticket_id": 2, "subject": "b", "weight": 2.0, "vip": False, "meta": None, "mixed": "x"},
        {"ticket_id": 3, "subject": "c", "weight": None, "vip": None, "meta": None, "mixed": None},
    ]
    lines = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    # JSON lines out keep the values as the rows had them.
    assert [{k: line[k] for k in rows[0]} for line in lines] == [
        {k: row.get(k) for k in rows[0]} for row in rows
    ]


def test_open_and_failed_rows_keep_their_input_with_null_answers(
    cli: CliRunner, tmp_path: Path
) -> None:
    rows = tickets(3)
    rows[1]["ticket_id"] = "has space"  # renders an id that is not a custom_id
    table = write_csv(tmp_path / "t.csv", rows)
    (tmp_path / "t.toml").write_text(TEMPLATE)
    submitted = invoke(
        cli,
        "submit",
        str(table),
        "--template",
        str(tmp_path / "t.toml"),
        "--endpoint",
        "simulator",
        "--skip-invalid",
    )
    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()

    refused = invoke(cli, "results", batch_id, "--with-input", "--format", "flat")
    assert refused.exit_code == 1 and "has not ended" in refused.stderr
    assert "--partial" in refused.stderr and "Traceback" not in refused.output
    partial = invoke(cli, "results", batch_id, "--with-input", "--format", "flat", "--partial")

    lines = [json.loads(line) for line in partial.stdout.splitlines()]
    assert [{c: line[c] for c in HEADER} for line in lines] == rows
    assert [line["result_type"] for line in lines] == [None, "errored", None]
    assert lines[1]["error_message"].startswith(f"{table}:row 2:")
    assert all(line["answer"] is None and line["text"] is None for line in lines)
    assert all(line["cost_usd"] is None for line in lines)


def test_with_input_is_refused_for_anthropic_only_and_a_batch_not_from_a_table(
    cli: CliRunner, tmp_path: Path
) -> None:
    (tmp_path / "r.jsonl").write_bytes(jsonl([request_line("a")]))
    batch_id = invoke(cli, "submit", str(tmp_path / "r.jsonl"), "--endpoint", "simulator")
    assert batch_id.exit_code == 0, batch_id.output
    ran = invoke(cli, "run", batch_id.stdout.strip())
    assert ran.exit_code == 0, ran.output

    anthropic = invoke(cli, "results", batch_id.stdout.strip(), "--with-input")
    only = invoke(
        cli,
        "results",
        batch_id.stdout.strip(),
        "--with-input",
        "--format",
        "csv",
        "--only",
        "errored",
    )
    not_table = invoke(cli, "results", batch_id.stdout.strip(), "--with-input", "--format", "csv")

    assert anthropic.exit_code == 2 and "'anthropic' cannot hold the input rows" in anthropic.stderr
    assert only.exit_code == 2 and "writes every input row" in only.stderr
    assert not_table.exit_code == 1
    assert "was not submitted from a table" in not_table.stderr
    assert "Traceback" not in not_table.output


def test_record_batches_take_one_chunk_of_records_at_a_time() -> None:
    """The Parquet writer's memory bound: a batch is built from at most `rows_per_batch`
    records taken from the stream, and the next ones are read only after it is handed on."""
    from batchrun.export.joined import AnswerSpec, layout
    from batchrun.export.joined_files import record_batches, write_joined_parquet

    plan = layout({"n": "int64"}, AnswerSpec())
    taken = 0

    def records() -> Iterator[dict[str, Any]]:
        nonlocal taken
        for n in range(2_500):
            taken += 1
            yield {name: (n if name == "n" else None) for name in plan.names}

    seen = []
    for batch in record_batches(records(), plan, rows_per_batch=1_000):
        seen.append((batch.num_rows, taken))
    assert seen == [(1000, 1000), (1000, 2000), (500, 2500)]

    out = io.BytesIO()
    taken = 0
    assert write_joined_parquet(records(), out, plan, row_group_rows=1_000) == 2_500
    parquet = pq.ParquetFile(io.BytesIO(out.getvalue()))
    assert parquet.metadata.num_row_groups == 3
    assert parquet.read().column("n").to_pylist() == list(range(2_500))


@pytest.mark.sqlite_only
def test_a_joined_export_takes_the_same_memory_for_four_times_the_rows(
    db_url: str, tmp_path: Path
) -> None:
    """Streamed: the peak of Python memory while 16,000 rows are joined and written is that
    of 4,000 (one chunk of the store's stream at a time), not four times it."""
    import tracemalloc

    import batchrun

    def peak_bytes(rows: int) -> int:
        with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as client:
            batch = client.submit_table(
                ({"n": n, "subject": "s" * 200} for n in range(rows)),
                template={"model": "claude-sonnet-4-5", "max_tokens": 20, "user": "{{ subject }}"},
                endpoint="simulator",
            )
            tracemalloc.start()
            try:
                with (tmp_path / f"{rows}.csv").open("w", newline="") as out:
                    written = client.export(
                        batch.id, out, format="csv", with_input=True, partial=True
                    )
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                assert written == rows

    small, large = peak_bytes(4_000), peak_bytes(16_000)

    assert large < small * 1.5, (small, large)
