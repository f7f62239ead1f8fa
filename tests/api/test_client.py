"""The public Python API: batchrun.Client does what the command does, from Python, on real
databases and the in-process simulator."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from anthropic.types.messages import MessageBatchIndividualResponse

import batchrun
from batchrun.errors import (
    BatchNotFoundError,
    BatchrunError,
    BatchStateError,
    ConfigError,
    ExitCode,
    InputFileError,
)
from batchrun.ops.session import Note, PassFinished, Progress, RunEvent
from tests.conftest import jsonl, request_line

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[batchrun.Client]:
    """A client on a fresh database that sees no config file and no key of this machine."""
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def _python_blocks(page: Path) -> list[str]:
    text = page.read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


@pytest.mark.parametrize("index", [0, 1], ids=["sync", "async"])
def test_the_documented_examples_run_as_they_are(tmp_path: Path, index: int) -> None:
    code = _python_blocks(DOCS / "python-api.md")[index]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHRUN_", "ANTHROPIC_"))}

    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert ran.returncode == 0, ran.stderr
    if index == 0:
        expected = (DOCS / "python-api.md").read_text().split("```text\n", 1)[1].split("```")[0]
        assert ran.stdout == expected
    else:
        assert ran.stdout == "a succeeded\n"


def test_submit_run_status_and_results_from_python(client: batchrun.Client) -> None:
    batch = client.submit(
        (request_line(f"q-{i}") for i in range(5)), endpoint="simulator", name="from python"
    )
    result = client.run(batch.id, limits={"rpm": 6000}, stop_on_signals=False)
    status = client.status(batch.id)
    lines = list(client.results(batch.id))

    assert (batch.name, batch.endpoint, batch.processing_status) == (
        "from python",
        "simulator",
        "in_progress",
    )
    assert result.exit_code == ExitCode.OK and result.passes == 1
    assert result.last is not None and result.last.report.succeeded == 5
    assert (status.processing_status, status.request_counts.succeeded) == ("ended", 5)
    assert [line["custom_id"] for line in lines] == [f"q-{i}" for i in range(5)]
    for line in lines:
        MessageBatchIndividualResponse.model_validate(line)
    assert [b.id for b in client.list()] == [batch.id]


def test_invalid_objects_are_listed_by_position_and_nothing_is_stored(
    client: batchrun.Client,
) -> None:
    bad = request_line("b")
    del bad["params"]["max_tokens"]

    with pytest.raises(InputFileError) as raised:
        client.submit([request_line("a"), bad, {"custom_id": "c"}], endpoint="simulator")

    assert raised.value.message.splitlines() == [
        '<requests>:2: params.max_tokens is missing; add "max_tokens": <a positive integer>, '
        "e.g. 1024",
        '<requests>:3: params is missing; put the Messages API request under "params"',
        "nothing was stored; fix the lines above and submit again",
    ]
    assert raised.value.exit_code == ExitCode.ERROR
    assert client.list() == []


def test_a_stream_and_a_path_are_requests_too(client: batchrun.Client, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([request_line("p")]))

    from_path = client.submit(path, endpoint="simulator")
    from_stream = client.submit(io.BytesIO(jsonl([request_line("s")])), endpoint="simulator")

    assert client.status(from_path.id).source == str(path)
    assert client.status(from_stream.id).request_counts.processing == 1


def test_the_budget_is_stored_with_the_batch(client: batchrun.Client) -> None:
    batch = client.submit([request_line("a")], endpoint="simulator", max_cost_usd=0.25)

    assert client.status(batch.id).max_cost_usd == 0.25


def test_a_pause_is_a_result_not_an_error(client: batchrun.Client) -> None:
    batch = client.submit(
        [request_line(f"r{i}", max_tokens=100_000) for i in range(3)],
        endpoint="simulator",
        max_cost_usd=0.000001,
    )

    result = client.run(batch.id, stop_on_signals=False)

    assert result.exit_code == ExitCode.PAUSED
    assert result.last is not None
    assert "max-cost $0.0000 reached" in result.last.report.paused[batch.id]


def test_cancel_then_resume(client: batchrun.Client) -> None:
    batch = client.submit([request_line("a"), request_line("b")], endpoint="simulator")

    canceled = client.cancel(batch.id)
    result = client.resume(batch.id, stop_on_signals=False)

    assert (canceled.processing_status, canceled.request_counts.canceled) == ("ended", 2)
    assert result.exit_code == ExitCode.OK
    assert client.status(batch.id).request_counts.succeeded == 2


def test_a_run_whose_batch_is_canceled_meanwhile_exits_7(client: batchrun.Client) -> None:
    # Paced at 120 a minute, 30 requests take 15 s: the cancel comes after the first few.
    batch = client.submit([request_line(f"r{i}") for i in range(30)], endpoint="simulator")

    def cancel_once_started(event: RunEvent) -> None:
        started = isinstance(event, Progress) and event.snapshot.succeeded >= 2
        if started and client.status(batch.id).processing_status == "in_progress":
            client.cancel(batch.id)

    result = client.run(
        batch.id,
        limits={"rpm": 120},
        progress_interval_s=0.1,
        on_event=cancel_once_started,
        stop_on_signals=False,
    )

    assert result.exit_code == ExitCode.CANCELED
    counts = client.status(batch.id).request_counts
    assert counts.canceled > 0 and counts.succeeded + counts.canceled == 30


def test_results_of_a_batch_that_has_not_ended_need_partial(client: batchrun.Client) -> None:
    batch = client.submit([request_line("a")], endpoint="simulator")

    with pytest.raises(BatchStateError, match="has not ended"):
        list(client.results(batch.id))
    assert list(client.results(batch.id, partial=True)) == []


def test_export_writes_a_file_whole(client: batchrun.Client, tmp_path: Path) -> None:
    batch = client.submit([request_line("a"), request_line("b")], endpoint="simulator")
    client.run(batch.id, stop_on_signals=False)
    target = tmp_path / "out.csv"

    count = client.export(batch.id, target, format="csv")

    assert count == 2
    assert target.read_text().splitlines()[0].startswith("batch_id,custom_id,line,status")
    assert list(tmp_path.glob(".out.csv.*")) == []


def test_mistakes_are_batchrun_errors_with_exit_codes(client: batchrun.Client) -> None:
    with pytest.raises(BatchNotFoundError) as missing:
        client.status("msgbatch_nope")
    with pytest.raises(ConfigError, match="unknown rate limit 'rpmm'"):
        client.run(limits={"rpmm": 5})
    with pytest.raises(ConfigError, match="unknown export format 'xml'"):
        client.export("msgbatch_nope", io.StringIO(), format="xml")

    assert missing.value.exit_code == ExitCode.ERROR


@pytest.mark.asyncio
async def test_the_async_twins_run_on_the_callers_loop(client: batchrun.Client) -> None:
    events: list[RunEvent] = []
    batch = await client.asubmit([request_line(f"q{i}") for i in range(3)], endpoint="simulator")

    with pytest.raises(BatchrunError, match=r"use `await client.arun\(...\)` there"):
        client.run(batch.id)
    result = await client.arun(batch.id, on_event=events.append, progress_interval_s=0.01)
    lines = [line async for line in client.aresults(batch.id)]
    status = await client.astatus(batch.id)
    page = await client.areport_html(batch.id)

    assert result.exit_code == ExitCode.OK
    assert page.startswith("<!DOCTYPE html>") and batch.id in page
    assert [line["custom_id"] for line in lines] == ["q0", "q1", "q2"]
    assert status.request_counts.succeeded == 3
    assert isinstance(events[-1], PassFinished)
    assert all(isinstance(event, Note | Progress | PassFinished) for event in events)


def test_import_batchrun_loads_no_heavy_module() -> None:
    code = (
        "import sys, batchrun\n"
        "heavy = [m for m in ('sqlalchemy', 'httpx', 'pydantic', 'rich', 'typer', 'alembic')"
        " if m in sys.modules]\n"
        "print(json.dumps(heavy))"
    )

    ran = subprocess.run(
        [sys.executable, "-c", "import json\n" + code],
        capture_output=True,
        text=True,
        check=True,
    )

    assert json.loads(ran.stdout) == []
    assert asyncio.iscoroutinefunction(batchrun.Client.arun)


def test_a_client_given_another_folder_reads_that_folders_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process is elsewhere: the folder's batchrun.toml must be found and read there.
    project = tmp_path / "project"
    project.mkdir()
    (project / "batchrun.toml").write_text(
        '[endpoints.mine]\nbase_url = "http://127.0.0.1:9"\nauth = "none"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with batchrun.Client(f"sqlite:///{tmp_path / 'db.sqlite'}", env={}, cwd=project) as client:
        assert client.endpoints().by_name["mine"].base_url == "http://127.0.0.1:9"
