"""`estimate --skip-invalid` and `submit --dry-run --skip-invalid` plan the valid lines of a file
with bad ones, say how many lines were skipped and name the first few problems (file:line),
as `submit --skip-invalid` would store them; nothing is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchrun.ops.planning import INVALID_PROBLEMS_SHOWN
from tests.clitools import invoke, runner, stored_batches
from tests.conftest import request_line


@pytest.fixture
def cli(db_url: str) -> CliRunner:
    return runner(db_url)


def requests_with_bad_lines(tmp_path: Path, *, bad: int = 3, good: int = 10) -> Path:
    """``good`` valid lines, with a bad one (not JSON, or max_tokens 0) after each of the
    first ``bad``."""
    rows: list[bytes] = []
    for i in range(good):
        rows.append(json.dumps(request_line(f"r{i}", max_tokens=100)).encode())
        if i < bad:
            broken = b"{not json" if i % 2 == 0 else json.dumps(request_line(f"z{i}", max_tokens=0))
            rows.append(broken if isinstance(broken, bytes) else broken.encode())
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


@pytest.mark.parametrize("command", [["estimate"], ["submit", "--dry-run"]])
def test_the_valid_lines_are_planned_and_the_bad_ones_named(
    cli: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    path = requests_with_bad_lines(tmp_path)

    refused = invoke(cli, *command, str(path))
    planned = invoke(cli, *command, str(path), "--skip-invalid")
    as_json = invoke(cli, *command, str(path), "--skip-invalid", "--json")

    assert refused.exit_code == 1 and f"{path}:2: " in refused.stderr
    assert planned.exit_code == 0, planned.output
    assert "Traceback" not in planned.output
    assert "skipped 3 invalid lines" in planned.stderr
    assert f"warning: {path}:2: " in planned.stderr
    assert f"warning: {path}:4: params.max_tokens is 0" in planned.stderr
    assert "invalid lines" in planned.stdout
    plan = json.loads(as_json.stdout)
    assert plan["requests"] == 10
    assert plan["models"][0]["max_output_tokens"] == 10 * 100
    assert plan["invalid_lines"] == 3
    assert plan["invalid_problems"][0].startswith(f"{path}:2: ")
    assert stored_batches(cli) == []


def test_only_the_first_problems_are_named_and_the_rest_counted(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = requests_with_bad_lines(tmp_path, bad=INVALID_PROBLEMS_SHOWN + 4)

    plan = json.loads(invoke(cli, "estimate", str(path), "--skip-invalid", "--json").stdout)

    assert plan["invalid_lines"] == INVALID_PROBLEMS_SHOWN + 4
    assert len(plan["invalid_problems"]) == INVALID_PROBLEMS_SHOWN + 1
    assert plan["invalid_problems"][-1] == "… and 4 more problems"


def test_the_estimate_covers_what_submit_skip_invalid_queues(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = requests_with_bad_lines(tmp_path, bad=4, good=7)

    plan = json.loads(invoke(cli, "estimate", str(path), "--skip-invalid", "--json").stdout)
    submitted = invoke(cli, "submit", str(path), "--skip-invalid")

    assert submitted.exit_code == 0, submitted.output
    counts = stored_batches(cli)[0]["request_counts"]
    assert (plan["requests"], plan["invalid_lines"]) == (counts["processing"], counts["errored"])


def test_a_problem_with_the_whole_file_still_refuses_it(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n\n")

    result = invoke(cli, "estimate", str(path), "--skip-invalid")

    assert result.exit_code == 1
    assert "nothing was estimated" in result.stderr
    assert "Traceback" not in result.output
