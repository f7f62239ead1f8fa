"""`estimate TABLE --template` and `submit TABLE --template --dry-run`: a table planned
before anything is stored, each row rendered exactly as submit renders it, with the same
figures a request file of the rendered requests gets, the answer schema counted, and every
row's problems named `FILE:row N`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from batchrun.store.store import Store
from tests.cli.test_cli_tables import (
    TEMPLATE,
    cli,
    stored_requests,
    template_file,
    tickets,
    write_csv,
)
from tests.clitools import invoke, stored_batches

__all__ = ["cli"]  # the fixture, shared with the submit tests

_FIGURES = ("requests", "input_tokens", "expected_output_tokens", "max_output_tokens")


def estimate_json(cli: CliRunner, *args: str) -> dict[str, Any]:
    result = invoke(cli, "estimate", *args, "--endpoint", "simulator", "--json")
    assert result.exit_code == 0, result.output
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan


def test_a_table_is_planned_as_the_file_of_its_rendered_requests_would_be(
    cli: CliRunner, tmp_path: Path, store: Store
) -> None:
    table = write_csv(tmp_path / "tickets.csv", tickets(40))
    template = str(template_file(tmp_path))

    planned = estimate_json(cli, str(table), "--template", template)

    assert stored_batches(cli) == []  # nothing stored by the estimate
    # The very requests submit stores, written as a request file, plan the same.
    submitted = invoke(cli, "submit", str(table), "--template", template, "--endpoint", "simulator")
    assert submitted.exit_code == 0, submitted.output
    requests = stored_requests(store, submitted.stdout.strip())
    jsonl = tmp_path / "rendered.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"custom_id": r["custom_id"], "params": r["params"]}) + "\n"
            for r in requests
        )
    )
    from_file = estimate_json(cli, str(jsonl))
    assert planned["requests"] == 40
    for figure in _FIGURES:
        assert planned[figure] == from_file[figure], figure
    assert planned["expected_cost_usd"] == from_file["expected_cost_usd"]
    assert planned["duration"] == from_file["duration"]
    assert planned["source"] == str(table)


def test_the_answer_schema_counts_as_input_tokens(cli: CliRunner, tmp_path: Path) -> None:
    table = str(write_csv(tmp_path / "tickets.csv", tickets(10)))
    plain = estimate_json(cli, table, "--template", str(template_file(tmp_path, TEMPLATE)))
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "required": ["category"],
                "properties": {
                    "category": {"type": "string", "enum": ["billing", "bug", "account", "other"]}
                },
            }
        )
    )

    structured = estimate_json(
        cli, table, "--template", str(template_file(tmp_path, TEMPLATE)), "--schema", str(schema)
    )

    # Each request carries output_config.format = {"type": "json_schema", "schema": ...}.
    format_chars = len(
        json.dumps(
            {"type": "json_schema", "schema": json.loads(schema.read_text())},
            separators=(",", ":"),
        )
    )
    per_request = (structured["input_tokens"] - plain["input_tokens"]) / 10
    assert format_chars / 3.5 - 1 <= per_request <= format_chars / 3.5 + 1


def test_rows_that_cannot_be_rendered_are_listed_by_row_and_nothing_is_planned(
    cli: CliRunner, tmp_path: Path
) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ticket_id,subject,product line\n1,a,app\n2,b,web\n")

    result = invoke(
        cli,
        "estimate",
        str(table),
        "--template",
        str(template_file(tmp_path)),
        "--endpoint",
        "simulator",
    )

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for row in (1, 2):
        assert (
            f"{table}:row {row}: the user template uses 'body', which is not a column of this "
            "row; its columns are 'ticket_id', 'subject', 'product line'" in result.stderr
        )
    assert "nothing was estimated" in result.stderr


def test_skip_invalid_plans_the_rows_that_render_and_names_the_others_by_row(
    cli: CliRunner, tmp_path: Path
) -> None:
    rows = tickets(6)
    rows[3]["ticket_id"] = "not an id!"
    table = write_csv(tmp_path / "t.csv", rows)

    plan = estimate_json(
        cli, str(table), "--template", str(template_file(tmp_path)), "--skip-invalid"
    )

    assert plan["requests"] == 5
    assert plan["invalid_lines"] == 1
    assert plan["invalid_problems"][0].startswith(f"{table}:row 4: the id template gave")


def test_submit_dry_run_of_a_table_prints_the_estimate_and_stores_nothing(
    cli: CliRunner, tmp_path: Path
) -> None:
    table = str(write_csv(tmp_path / "t.csv", tickets(7)))
    template = str(template_file(tmp_path))

    dry = invoke(
        cli,
        "submit",
        table,
        "--template",
        template,
        "--endpoint",
        "simulator",
        "--dry-run",
        "--json",
    )

    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout) == estimate_json(cli, table, "--template", template)
    assert stored_batches(cli) == []


def test_schema_and_table_format_need_a_template_on_estimate(
    cli: CliRunner, tmp_path: Path
) -> None:
    result = invoke(cli, "estimate", "x.jsonl", "--table-format", "csv")

    assert result.exit_code == 2, result.output
    assert "--table-format needs --template" in result.stderr
    assert "Traceback" not in result.output


def test_a_template_file_problem_is_refused_before_any_row_is_read(
    cli: CliRunner, tmp_path: Path
) -> None:
    template = template_file(tmp_path, 'model = "m"\nuser = "{{ subject }}"\n')
    result = invoke(cli, "estimate", "absent.csv", "--template", str(template))

    assert result.exit_code != 0
    assert "max_tokens is missing" in result.stderr
    assert "Traceback" not in result.output


def test_estimate_table_in_python_names_rows_and_plans_a_mapping_template(
    tmp_path: Path,
) -> None:
    from batchrun import Client

    table = write_csv(tmp_path / "t.csv", tickets(3))
    with Client(
        f"sqlite:///{tmp_path / 'db.sqlite'}", env={"HOME": str(tmp_path)}, cwd=tmp_path
    ) as client:
        plan = client.estimate_table(
            table,
            template={"model": "claude-sonnet-4-5", "max_tokens": 100, "user": "{{ subject }}"},
            endpoint="simulator",
        )
    assert plan.requests == 3
    assert plan.max_output_tokens == 300
    assert plan.source == str(table)
