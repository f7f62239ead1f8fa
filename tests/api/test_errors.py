"""The errors Client raises carry their facts as attributes (as the anthropic SDK's do), so a
caller acts on them without parsing the message; the message stays the one the CLI prints."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import batchrun
from batchrun.cli.app import app
from batchrun.cli.batch_ids import match_batch
from batchrun.ops.runlock import run_lock
from tests.conftest import jsonl, request_line


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[batchrun.Client]:
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def test_an_unknown_batch_names_its_id(client: batchrun.Client) -> None:
    with pytest.raises(batchrun.BatchNotFoundError) as raised:
        client.status("msgbatch_nope")

    assert raised.value.batch_id == "msgbatch_nope"
    assert raised.value.message == (
        "no batch 'msgbatch_nope' in this database; `batchrun list` shows its batches"
    )


def test_a_reference_that_matches_several_batches_names_them_all(
    client: batchrun.Client,
) -> None:
    first = client.submit([request_line("a")], endpoint="simulator", name="nightly")
    second = client.submit([request_line("b")], endpoint="simulator", name="nightly")

    with pytest.raises(batchrun.AmbiguousBatchError) as raised:
        match_batch("nightly", client.list())

    assert raised.value.batch_id == "nightly"
    assert set(raised.value.matches) == {first.id, second.id}
    assert isinstance(raised.value, batchrun.BatchNotFoundError)


def test_a_batch_in_the_wrong_state_names_it(client: batchrun.Client) -> None:
    batch = client.submit([request_line("a")], endpoint="simulator")

    with pytest.raises(batchrun.BatchStateError) as deleted:
        client.delete(batch.id)
    with pytest.raises(batchrun.BatchStateError) as read:
        list(client.results(batch.id))

    assert deleted.value.batch_id == read.value.batch_id == batch.id


def test_a_request_file_with_bad_lines_lists_each_problem(
    client: batchrun.Client, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(
        jsonl([request_line("ok1"), request_line("bad id"), request_line("ok2")]) + b"{not json\n"
    )

    with pytest.raises(batchrun.InputFileError) as submitted:
        client.submit(path, endpoint="simulator")
    with pytest.raises(batchrun.InputFileError) as estimated:
        client.estimate(path, endpoint="simulator")

    for raised in (submitted.value, estimated.value):
        assert [problem.split(":", 2)[1] for problem in raised.problems] == ["2", "4"]
        assert all(problem.startswith(f"{path}:") for problem in raised.problems)
        assert all(problem in raised.message for problem in raised.problems)
    assert client.list() == []


def test_a_file_that_cannot_be_read_has_no_line_problems(
    client: batchrun.Client, tmp_path: Path
) -> None:
    with pytest.raises(batchrun.InputFileError) as raised:
        client.submit(tmp_path / "missing.jsonl", endpoint="simulator")

    assert raised.value.problems == ()
    assert "no such file" in raised.value.message


def test_a_missing_key_names_its_variable(tmp_path: Path) -> None:
    client = batchrun.Client(
        f"sqlite:///{tmp_path / 'x.db'}", env={"HOME": str(tmp_path)}, cwd=tmp_path
    )
    batch = client.submit([request_line("a")], endpoint="simulator")

    with pytest.raises(batchrun.MissingApiKeyError) as raised:
        client.run(batch.id, endpoint="anthropic", stop_on_signals=False)

    assert raised.value.variable == "ANTHROPIC_API_KEY"
    assert raised.value.what == "the API key for endpoint 'anthropic'"


def test_an_unknown_endpoint_names_it(client: batchrun.Client) -> None:
    with pytest.raises(batchrun.UnknownEndpointError) as raised:
        client.submit([request_line("a")], endpoint="simulatr")

    assert raised.value.endpoint == "simulatr"
    assert "did you mean 'simulator'" in raised.value.message


def test_a_budget_for_unpriced_models_names_the_models(client: batchrun.Client) -> None:
    lines = [request_line("a", model="zeta-model"), request_line("b", model="alpha-model")]

    with pytest.raises(batchrun.UnpricedModelsError) as raised:
        client.submit(lines, endpoint="simulator", max_cost_usd=1.0)

    assert raised.value.models == ("alpha-model", "zeta-model")
    assert raised.value.exit_code == batchrun.ExitCode.USAGE


@pytest.mark.asyncio
async def test_a_locked_database_names_the_run_that_holds_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    client = batchrun.Client(sqlite_url, env={"HOME": str(tmp_path)}, cwd=tmp_path)
    batch = await client.asubmit([request_line("a")], endpoint="simulator")
    before = datetime.now(UTC).replace(microsecond=0)

    # The lock is held through another open file, as another process would hold it.
    async with run_lock(sqlite_url, wait=False):
        with pytest.raises(batchrun.RunLockedError) as raised:
            await client.arun(batch.id)

    assert raised.value.pid == os.getpid()
    assert raised.value.since is not None
    assert before <= raised.value.since <= datetime.now(UTC) + timedelta(seconds=1)
    assert f"pid {os.getpid()}" in raised.value.message
    assert raised.value.exit_code == batchrun.ExitCode.LOCKED
    client.close()


def test_errors_made_without_facts_keep_their_default_message() -> None:
    assert batchrun.RunLockedError().pid is None
    assert batchrun.BatchNotFoundError().message.startswith("No batch has that id")
    assert batchrun.InputFileError(problems=["f:1: x"]).message == "f:1: x"
    assert batchrun.UnpricedModelsError(models=["b", "a"]).models == ("a", "b")


@pytest.mark.parametrize(
    ("arguments", "flags", "argument"),
    [
        ({"endpoint": "simulator"}, ["--endpoint", "simulator"], "endpoint"),
        ({"forever": True, "batch": True}, ["--forever", "BATCH"], "forever"),
        ({"notify_url": "ftp://hooks.example.com/s3cr3t"}, ["--notify", "ftp://x/s3cr3t"], None),
    ],
    ids=["endpoint-without-batches", "forever-with-batches", "notify-not-http"],
)
def test_arguments_that_do_not_go_together_are_one_rule_with_one_wording(
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arguments: dict[str, Any],
    flags: list[str],
    argument: str | None,
) -> None:
    client = batchrun.Client(sqlite_url, env={"HOME": str(tmp_path)}, cwd=tmp_path)
    batch = client.submit([request_line("a")], endpoint="simulator")
    batch_ids = [batch.id] if arguments.pop("batch", False) else []
    monkeypatch.chdir(tmp_path)

    with pytest.raises(batchrun.UsageError) as raised:
        client.run(*batch_ids, stop_on_signals=False, **arguments)
    shown = CliRunner().invoke(
        app,
        ["run", *[batch.id if flag == "BATCH" else flag for flag in flags]],
        env={"BATCHRUN_DATABASE_URL": sqlite_url, "HOME": str(tmp_path)},
    )

    error = raised.value
    assert error.argument == (argument or "notify_url")
    assert error.message == f"{error.argument}: {error.problem}"
    assert error.exit_code == shown.exit_code == batchrun.ExitCode.USAGE
    # The CLI says the Client's words after its flag (typer wraps long lines in its box).
    assert " ".join(error.problem.split()[:5]) in " ".join(shown.stderr.split())
    assert "s3cr3t" not in error.message and "s3cr3t" not in shown.output
    assert client.status(batch.id).request_counts.processing == 1
    client.close()


@pytest.mark.parametrize(
    ("arguments", "flags"),
    [({"format": "xml"}, ["--format", "xml"]), ({"only": "bogus"}, ["--only", "bogus"])],
    ids=["format", "only"],
)
def test_an_export_argument_is_one_rule_with_one_wording(
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arguments: dict[str, Any],
    flags: list[str],
) -> None:
    client = batchrun.Client(sqlite_url, env={"HOME": str(tmp_path)}, cwd=tmp_path)
    batch = client.submit([request_line("a")], endpoint="simulator")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(batchrun.UsageError) as exported:
        client.export(batch.id, tmp_path / "out", partial=True, **arguments)
    with pytest.raises(batchrun.UsageError) as read:
        list(client.results("msgbatch_nope", only=arguments.get("only", "bogus")))
    shown = CliRunner().invoke(
        app,
        ["results", batch.id, "--partial", *flags],
        env={"BATCHRUN_DATABASE_URL": sqlite_url, "HOME": str(tmp_path)},
    )

    error = exported.value
    assert error.argument == next(iter(arguments))
    assert error.exit_code == shown.exit_code == batchrun.ExitCode.USAGE
    assert " ".join(error.problem.split()[:4]) in " ".join(shown.stderr.split())
    # The rule is checked before the batch is looked up.
    assert read.value.argument == "only"
    assert not (tmp_path / "out").exists()
    client.close()
