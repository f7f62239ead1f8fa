"""`submit --skip-invalid`: valid lines are stored, each invalid line becomes an errored
result, and `results` keeps one line per input line, in input order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.types.messages import MessageBatchIndividualResponse
from typer.testing import CliRunner

from tests.clitools import invoke, runner, stored_batches
from tests.conftest import request_line


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


@pytest.fixture
def cli(db_url: str) -> CliRunner:
    return runner(db_url)


def export(cli: CliRunner, batch_id: str, *args: str) -> list[dict[str, Any]]:
    result = invoke(cli, "results", batch_id, *args)
    assert result.exit_code == 0, result.output
    for row in result.stdout.splitlines():
        MessageBatchIndividualResponse.model_validate_json(row)
    return [json.loads(row) for row in result.stdout.splitlines()]


def test_invalid_lines_become_errored_results_in_input_order(
    cli: CliRunner, tmp_path: Path
) -> None:
    no_id = request_line("x")
    del no_id["custom_id"]
    rows = [
        dumps(request_line("ok-1")),
        dumps(no_id),  # wants line-2, which line 3 uses: becomes line-2-2
        dumps(request_line("line-2")),
        dumps(request_line("bad-params", max_tokens=0)),  # keeps its own id
        b"{not json",
        dumps(request_line("ok-1")),  # a duplicate of line 1
        b'{"custom_id": "caf\xe9"}',  # not UTF-8
        dumps(request_line("a b")),
        dumps(request_line("ok-9")),
    ]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")

    submitted = invoke(cli, "submit", str(path), "--endpoint", "simulator", "--skip-invalid")

    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()
    assert f"warning: {path}:6: custom_id 'ok-1' is already used on line 1" in submitted.stderr
    assert "stored 9 requests as batch" in submitted.stderr
    assert "6 invalid, recorded as errored results" in submitted.stderr
    status = json.loads(invoke(cli, "status", batch_id, "--json").stdout)
    assert status["request_counts"]["processing"] == 3
    assert status["request_counts"]["errored"] == 6

    ran = invoke(cli, "run", batch_id)

    assert ran.exit_code == 3, ran.output
    exported = export(cli, batch_id)
    assert [row["custom_id"] for row in exported] == [
        "ok-1",
        "line-2-2",
        "line-2",
        "bad-params",
        "line-5",
        "line-6",
        "line-7",
        "line-8",
        "ok-9",
    ]
    kinds = [row["result"]["type"] for row in exported]
    assert kinds == ["succeeded", "errored", "succeeded", *["errored"] * 5, "succeeded"]
    for line_no, row in enumerate(exported, start=1):
        if row["result"]["type"] != "errored":
            continue
        error = row["result"]["error"]
        assert set(error) == {"type", "error", "request_id"}
        assert error["type"] == "error"
        assert error["request_id"] is None
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["message"].startswith(f"{path}:{line_no}: ")
    assert "params.max_tokens is 0" in exported[3]["result"]["error"]["error"]["message"]
    assert "not valid UTF-8" in exported[6]["result"]["error"]["error"]["message"]


def test_a_line_with_several_problems_lists_them_all_in_its_result(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    line = {"custom_id": "two", "params": {"max_tokens": 0, "messages": []}}
    path.write_bytes(dumps(request_line("one")) + b"\n" + dumps(line) + b"\n")

    batch_id = invoke(cli, "submit", str(path), "--skip-invalid").stdout.strip()

    message = export(cli, batch_id, "--partial")[0]["result"]["error"]["error"]["message"]
    assert message.splitlines() == [
        f'{path}:2: params.model is missing; add "model": "<model id>" to the request '
        "or set a default model",
        f"{path}:2: params.max_tokens is 0; it must be at least 1",
        f"{path}:2: params.messages is empty; add at least one message such as "
        '{"role": "user", "content": "..."}',
    ]


def test_a_file_of_only_invalid_lines_is_stored_as_an_ended_batch(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"[]\n\n42\n")

    batch_id = invoke(cli, "submit", str(path), "--skip-invalid").stdout.strip()

    status = json.loads(invoke(cli, "status", batch_id, "--json").stdout)
    assert status["processing_status"] == "ended"
    assert status["request_counts"]["errored"] == 2
    assert "nothing to run" in invoke(cli, "run", batch_id).stderr
    assert [row["custom_id"] for row in export(cli, batch_id)] == ["line-1", "line-3"]


def test_many_invalid_lines_across_insert_chunks_keep_their_order(
    cli: CliRunner, tmp_path: Path
) -> None:
    rows = [b"oops" if i % 7 == 3 else dumps(request_line(f"r{i}")) for i in range(2500)]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")

    submitted = invoke(cli, "submit", str(path), "--skip-invalid")

    assert submitted.exit_code == 0, submitted.output
    assert "warning: … and 337 more problems" in submitted.stderr
    exported = export(cli, submitted.stdout.strip(), "--partial")
    invalid = [i for i in range(2500) if i % 7 == 3]
    assert [row["custom_id"] for row in exported] == [f"line-{i + 1}" for i in invalid]
    status = stored_batches(cli)[0]["request_counts"]
    assert status == {
        "processing": 2500 - len(invalid),
        "succeeded": 0,
        "errored": len(invalid),
        "canceled": 0,
        "expired": 0,
    }
