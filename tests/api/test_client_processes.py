"""``Client.run(processes=N)``: the Python API's side of ``run --processes``: one result and
one stream of events for a run of several worker processes, and the arguments it refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import batchrun
from batchrun.errors import ExitCode, UnpricedModelsError, UsageError
from batchrun.ops.processes import process_count, usable_cores
from batchrun.ops.session import Note, PassFinished, Progress, RunEvent
from tests.conftest import request_line


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[batchrun.Client]:
    """A client on a fresh database that sees no config file and no key of this machine."""
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def test_a_run_of_two_processes_is_one_result_and_one_stream_of_events(
    client: batchrun.Client,
) -> None:
    events: list[RunEvent] = []
    batch = client.submit((request_line(f"q-{i}") for i in range(300)), endpoint="simulator")

    result = client.run(
        batch.id,
        processes=2,
        limits={"rpm": 60_000},
        on_event=events.append,
        progress_interval_s=0.05,
        stop_on_signals=False,
    )
    status = client.status(batch.id)

    assert result.exit_code == ExitCode.OK and result.passes == 1
    assert result.last is not None
    # Both workers' sends add up to the batch, once each.
    assert result.last.report.sent == result.last.report.succeeded == 300
    assert [b.counts.succeeded for b in result.last.batches] == [300]
    assert (status.processing_status, status.request_counts.succeeded) == ("ended", 300)
    finished = [e for e in events if isinstance(e, PassFinished)]
    assert len(finished) == 1 and finished[0].result is result.last
    assert all(isinstance(e, Note | Progress | PassFinished) for e in events)
    notes = [e.text for e in events if isinstance(e, Note)]
    assert len(notes) == len(set(notes))  # each worker's same note is told once
    assert any(isinstance(e, Progress) for e in events)


def test_processes_auto_is_the_usable_cores(client: batchrun.Client) -> None:
    assert process_count("auto") == min(usable_cores(), 64)
    assert process_count(" 3 ") == 3
    batch = client.submit((request_line(f"q-{i}") for i in range(20)), endpoint="simulator")

    result = client.run(batch.id, processes="auto", stop_on_signals=False)

    assert result.exit_code == ExitCode.OK
    assert client.status(batch.id).request_counts.succeeded == 20


@pytest.mark.parametrize(
    ("arguments", "argument", "words"),
    [
        ({"processes": 0}, "processes", "must be from 1 to 64"),
        ({"processes": 65}, "processes", "must be from 1 to 64"),
        ({"processes": "many"}, "processes", "'many' is not a number of processes"),
        ({"processes": True}, "processes", "must be from 1 to 64"),
        ({"processes": 2, "forever": True}, "forever", "runs in one process"),
        ({"processes": 2, "on_session": print}, "on_session", "one session"),
    ],
)
def test_arguments_a_run_of_processes_refuses(
    client: batchrun.Client, arguments: dict[str, object], argument: str, words: str
) -> None:
    with pytest.raises(UsageError, match=words) as refused:
        client.run(**arguments)  # type: ignore[arg-type]

    assert refused.value.argument == argument
    assert refused.value.exit_code == ExitCode.USAGE


def test_a_workers_error_is_raised_as_its_own_class_with_its_attributes(
    client: batchrun.Client,
) -> None:
    batch = client.submit(
        (request_line(f"q-{i}", model="my-own-model") for i in range(10)), endpoint="simulator"
    )

    with pytest.raises(UnpricedModelsError) as refused:
        client.run(batch.id, processes=2, max_cost_usd=1.0, stop_on_signals=False)

    assert refused.value.models == ("my-own-model",)
    assert refused.value.exit_code == ExitCode.USAGE
    assert client.status(batch.id).request_counts.processing == 10
