"""Params nested deeper than MAX_JSON_DEPTH levels are one bad line with a clear message
(`file:line: params.metadata nests ... deeper than 128 levels`), never a traceback, in
`submit`, `estimate` and the line validator itself; a request at the limit is accepted and
stored as sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from batchrun.input.validation import MAX_JSON_DEPTH, InvalidLine, ValidRequest, validate_line
from tests.clitools import invoke, runner, stored_batches
from tests.conftest import request_line


def nested(levels: int) -> Any:
    """An object ``levels`` objects deep: 1 is ``{}``."""
    value: Any = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def deep_line(custom_id: str, levels: int) -> dict[str, Any]:
    """A request line whose deepest part, params.metadata, puts the line ``levels`` deep
    (the line itself is level 1, params level 2)."""
    return request_line(custom_id, metadata=nested(levels - 2))


def deep_raw(custom_id: str, levels: int, *, kind: str) -> bytes:
    """:func:`deep_line` as JSON text, written by hand: past 255 levels no encoder writes it."""
    opener, empty, closer = ('{"a":', "{}", "}") if kind == "object" else ("[", "[]", "]")
    metadata = opener * (levels - 3) + empty + closer * (levels - 3)
    head = json.dumps(request_line(custom_id))[:-2]  # without the closing "}}"
    return f'{head}, "metadata": {metadata}}}}}'.encode()


@pytest.mark.parametrize("kind", ["object", "array"])
@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 300, 2_000, 100_000])
def test_a_line_deeper_than_the_limit_is_invalid_naming_the_field_and_the_limit(
    levels: int, kind: str
) -> None:
    raw = deep_raw("deep", levels, kind=kind)
    assert raw.count(b"[" if kind == "array" else b"{") >= levels - 3
    item = validate_line(raw, 7)
    assert isinstance(item, InvalidLine)
    assert item.custom_id == "deep", "an errored result can still be recorded under the id"
    assert len(item.problems) == 1
    assert item.problems[0].startswith("params.metadata nests objects and arrays deeper than")
    assert f"{MAX_JSON_DEPTH} levels" in item.problems[0]


def test_a_line_exactly_at_the_limit_is_valid_and_kept_whole() -> None:
    line = deep_line("edge", MAX_JSON_DEPTH)
    item = validate_line(orjson.dumps(line), 1)
    assert isinstance(item, ValidRequest), item
    assert orjson.loads(item.params_json) == line["params"]


def test_many_shallow_containers_are_not_mistaken_for_depth() -> None:
    wide = request_line("wide", metadata={"xs": [[{"k": [1]}] for _ in range(5_000)]})
    assert isinstance(validate_line(orjson.dumps(wide), 1), ValidRequest)


@pytest.fixture
def cli(sqlite_url: str) -> CliRunner:
    return runner(sqlite_url)


@pytest.mark.parametrize("command", ["submit", "estimate"])
def test_submit_and_estimate_name_the_deep_line_in_one_line_without_a_traceback(
    cli: CliRunner, tmp_path: Path, command: str
) -> None:
    path = tmp_path / "requests.jsonl"
    lines = [request_line("a"), deep_line("b", 300), request_line("c")]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    result = invoke(cli, command, str(path), "--endpoint", "simulator")

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"{path}:2: params.metadata nests objects and arrays deeper than" in result.stderr
    assert f"{path}:1" not in result.stderr and f"{path}:3" not in result.stderr
    assert stored_batches(cli) == []


def test_submit_skip_invalid_keeps_the_others_and_errors_the_deep_request(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    lines = [request_line("a"), deep_line("b", 300)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    result = invoke(cli, "submit", str(path), "--endpoint", "simulator", "--skip-invalid")

    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    (batch,) = stored_batches(cli)
    assert batch["request_counts"]["processing"] == 1
    assert batch["request_counts"]["errored"] == 1
