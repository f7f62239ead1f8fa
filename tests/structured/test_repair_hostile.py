"""Structured requests against the hostile server, on SQLite and Postgres: what it answers
never matches a schema (text that is not JSON, a lone surrogate and a NUL in it, poisoned
usage), so each Message is repaired once and ends ``invalid_output`` (an answer that could
not be kept ends errored as before), one request at a time; the run finishes, nothing is paid
twice beyond the one repair, and what was stored can be exported."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import batchrun
from batchrun.errors import ExitCode
from batchrun.structured.schemas import ask_for
from tests.hostile import HostileServer, running_hostile_server

SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with running_hostile_server() as server:
        yield server


@pytest.fixture
def client(db_url: str, tmp_path: Path, hostile: HostileServer) -> Iterator[batchrun.Client]:
    config = tmp_path / "batchrun.toml"
    config.write_text(
        f'[endpoints.hostile]\nbase_url = "{hostile.url}"\nauth = "x-api-key"\n'
        'api_key_env = "HOSTILE_KEY"\ntimeout_s = 5\nmax_attempts = 4\n'
    )
    env = {"HOME": str(tmp_path), "HOSTILE_KEY": "sk-hostile-key"}
    with batchrun.Client(db_url, config=config, env=env, cwd=tmp_path) as opened:
        yield opened


def structured(modes: list[str], mode: str) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"r{i}",
            "params": ask_for(
                {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 20,
                    "messages": [{"role": "user", "content": f"q{i} <<hostile:{kind}>>"}],
                },
                SCHEMA,
                mode,  # type: ignore[arg-type]
            ),
        }
        for i, kind in enumerate(modes)
    ]


@pytest.mark.parametrize("mode", ["native", "tool"])
def test_answers_that_never_match_end_one_request_each_after_one_repair(
    client: batchrun.Client, hostile: HostileServer, tmp_path: Path, mode: str
) -> None:
    modes = ["normal", "odd_text", "odd_fields", "usage_2_63", "foreign", "normal"]
    batch = client.submit(structured(modes, mode), endpoint="hostile", repair=1)

    result = client.run(batch.id, stop_on_signals=False)

    assert result.exit_code == ExitCode.ERRORED_RESULTS
    sent = Counter(json.loads(r.body)["messages"][0]["content"].split()[0] for r in hostile.log)
    # A Message that does not match is repaired once (the repair of the lone surrogate's
    # answer sent as an escape), never more; an answer that could not be kept (poisoned
    # usage, JSON that is no Message) ends its request as before, with no repair.
    answered = {"normal", "odd_text", "odd_fields"}
    assert sent == {f"q{i}": 2 if kind in answered else 1 for i, kind in enumerate(modes)}
    status = client.status(batch.id)
    assert status.request_counts.errored == len(modes)
    assert status.repair_sends == 4
    flat = tmp_path / "flat.jsonl"
    client.export(batch.id, flat, format="flat")
    records = {r["custom_id"]: r for r in map(json.loads, flat.read_text().splitlines())}
    for i, kind in enumerate(modes):
        record = records[f"r{i}"]
        if kind in answered:
            assert record["error_type"] == "invalid_output" and record["attempts"] == 2
            assert record["raw_body"]
        else:
            assert record["error_type"] != "invalid_output" and record["attempts"] == 1
    assert len(list(client.results(batch.id))) == len(modes)
