"""Small things a new user hit on the command line: -v/--verbose, shell completion, naming a
batch by a prefix, its name or `last`, "did you mean" for an endpoint, the messages of prune,
an empty stdin, a duration without its unit and an unreachable Postgres, status --watch's
exit code, estimate's unpriced models, and compact Anthropic result lines."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from batchrun.cli.app import app
from tests.clitools import BATCHRUN, clean_env
from tests.conftest import cli_env, jsonl, request_line


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    # No config file of the machine running the tests may be found.
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def invoke(cli: CliRunner, *args: str, input: bytes | None = None) -> Result:
    return cli.invoke(app, list(args), input=input)


def submit(cli: CliRunner, tmp_path: Path, *extra: str, lines: int = 2) -> str:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([request_line(f"r{i}") for i in range(lines)]))
    result = invoke(cli, "submit", str(path), "--endpoint", "simulator", *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def shown_id(cli: CliRunner, ref: str) -> str:
    result = invoke(cli, "status", ref, "--json")
    assert result.exit_code == 0, result.output
    batch_id: str = json.loads(result.stdout)["id"]
    return batch_id


# -- -v / --verbose ---------------------------------------------------------------------------


def test_verbose_shows_no_int_type_in_help_and_takes_a_number_too(tmp_path: Path) -> None:
    env = clean_env(f"sqlite:///{tmp_path / 'b.db'}", COLUMNS="160", HOME=str(tmp_path))
    helped = subprocess.run(
        [BATCHRUN, "--help"], env=env, capture_output=True, text=True, check=False
    )
    (verbose,) = [line for line in helped.stdout.splitlines() if "--verbose" in line]

    counted = subprocess.run(
        [BATCHRUN, "-vv", "run"], env=env, capture_output=True, text=True, check=False
    )
    numbered = subprocess.run(
        [BATCHRUN, "--verbose", "2", "run"], env=env, capture_output=True, text=True, check=False
    )
    one = subprocess.run(
        [BATCHRUN, "--verbose=1", "run"], env=env, capture_output=True, text=True, check=False
    )

    assert "<int>" not in verbose and "INTEGER" not in verbose
    assert counted.returncode == numbered.returncode == one.returncode == 0, numbered.stderr
    assert " DEBUG " in counted.stderr
    assert " DEBUG " in numbered.stderr
    assert " DEBUG " not in one.stderr


# -- shell completion -------------------------------------------------------------------------


def completions(env: dict[str, str], line: str) -> list[str]:
    """What bash completion offers for ``line`` (the word after its last space)."""
    words = line.split(" ")
    completed = subprocess.run(
        [BATCHRUN],
        env={
            **env,
            "_BATCHRUN_COMPLETE": "complete_bash",
            "COMP_WORDS": line,
            "COMP_CWORD": str(len(words) - 1),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split()


def test_completion_offers_batch_ids_names_last_endpoints_and_formats(
    sqlite_url: str, tmp_path: Path
) -> None:
    cli = CliRunner(env=cli_env(sqlite_url, tmp_path / "home"))
    first = submit(cli, tmp_path, "--name", "nightly")
    second = submit(cli, tmp_path)
    env = clean_env(sqlite_url, HOME=str(tmp_path / "home"))

    assert completions(env, "batchrun status ") == ["last", second, first]
    assert completions(env, f"batchrun results {first[:12]}") == [first]
    assert completions(env, "batchrun cancel nig") == ["nightly"]
    assert completions(env, "batchrun run --endpoint langdock") == ["langdock-eu", "langdock-us"]
    assert completions(env, "batchrun submit x.jsonl --endpoint sim") == ["simulator"]
    assert completions(env, "batchrun results last --format ") == [
        "anthropic",
        "flat",
        "csv",
        "parquet",
    ]


def test_completion_of_batch_ids_creates_no_database(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    env = clean_env(f"sqlite:///{missing}", HOME=str(tmp_path))

    assert completions(env, "batchrun status ") == []
    assert not missing.exists()


# -- naming a batch -----------------------------------------------------------------------------


def test_a_batch_is_named_by_a_prefix_of_its_id_its_name_or_last(
    cli: CliRunner, tmp_path: Path
) -> None:
    first = submit(cli, tmp_path, "--name", "nightly")
    second = submit(cli, tmp_path, "--name", "weekly")

    assert shown_id(cli, "last") == second
    assert shown_id(cli, "nightly") == first
    assert shown_id(cli, first[:14]) == first
    assert shown_id(cli, first.removeprefix("msgbatch_")[:6]) == first
    ran = invoke(cli, "run", "weekly", "-q")
    exported = invoke(cli, "results", "last")
    canceled = invoke(cli, "cancel", "nightly")

    assert ran.exit_code == 0, ran.output
    assert len(exported.stdout.splitlines()) == 2
    assert canceled.exit_code == 0, canceled.output
    assert f"{first}: " in canceled.stderr


def test_an_ambiguous_prefix_or_name_is_refused_listing_the_matches(
    cli: CliRunner, tmp_path: Path
) -> None:
    first = submit(cli, tmp_path, "--name", "nightly")
    second = submit(cli, tmp_path, "--name", "nightly")

    by_prefix = invoke(cli, "status", "msgbatch_")
    by_name = invoke(cli, "results", "nightly")
    unknown = invoke(cli, "delete", "zz-nothing")

    assert by_prefix.exit_code == 1
    (line,) = by_prefix.stderr.strip().splitlines()
    assert line.startswith("error: 2 batches have ids starting with 'msgbatch_': ")
    assert first in line and second in line and line.endswith("give more of the id")
    assert by_name.exit_code == 1
    assert "2 batches are named 'nightly'" in by_name.stderr
    assert unknown.exit_code == 1
    assert "no batch 'zz-nothing' in this database" in unknown.stderr
    assert "Traceback" not in by_prefix.output + by_name.output + unknown.output


def test_last_in_an_empty_database_says_there_is_no_batch_yet(cli: CliRunner) -> None:
    result = invoke(cli, "status", "last")

    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: no batch yet, so no `last`; `batchrun submit FILE` stores one"
    )


# -- messages -----------------------------------------------------------------------------------


def test_an_unknown_endpoint_gets_a_did_you_mean(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([request_line("a")]))

    typo = invoke(cli, "submit", str(path), "--endpoint", "simulatr")
    two = invoke(cli, "estimate", str(path), "--endpoint", "langdock")
    none = invoke(cli, "submit", str(path), "--endpoint", "zzzz")

    assert typo.exit_code == 1
    assert "unknown endpoint 'simulatr' (did you mean 'simulator'?); known" in typo.stderr
    assert "(did you mean 'langdock-eu' or 'langdock-us'?)" in two.stderr
    assert none.exit_code == 1 and "did you mean" not in none.stderr


def test_prune_without_an_age_speaks_of_the_command_line_not_python(cli: CliRunner) -> None:
    result = invoke(cli, "prune")

    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: say how old an ended batch must be to go: --older-than 30d, or "
        'retention = "30d" in the config file'
    )


def test_an_age_without_a_unit_is_refused_and_every_hint_names_days(
    cli: CliRunner, tmp_path: Path
) -> None:
    bare = invoke(cli, "prune", "--older-than", "30")
    unreadable = invoke(cli, "prune", "--older-than", "a month")
    config = tmp_path / "batchrun.toml"
    config.write_text('retention = "30"\n')
    in_config = invoke(cli, "prune")
    config.write_text('retention = "one month"\n')
    bad_config = invoke(cli, "prune")

    assert bare.exit_code == 2
    assert "'30' has no unit; write 30d for 30 days" in bare.output
    assert unreadable.exit_code == 2
    assert "90s, 55m, 24h, 1h30m or 30d" in unreadable.output
    assert in_config.exit_code == 1
    assert "retention: '30' has no unit; write 30d for 30 days" in in_config.stderr
    assert "write it like 90s, 55m, 24h, 1h30m or 30d" in bad_config.stderr


@pytest.mark.parametrize("command", ["submit", "estimate"])
def test_an_empty_stdin_says_so_in_one_line_without_lines_above(
    cli: CliRunner, command: str
) -> None:
    result = invoke(cli, command, "-", input=b"")

    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: <stdin> contains no requests; write one JSON request per line")
    assert "above" not in line


def test_an_unreachable_postgres_is_not_a_lost_connection(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/nothing"

    result = CliRunner().invoke(app, ["--db", url, "list"], env={"HOME": str(tmp_path)})

    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot connect to the database {url} (")
    assert "lost" not in line


# -- status --watch -----------------------------------------------------------------------------


def test_status_watch_exits_as_run_does_when_requests_errored_or_the_batch_was_canceled(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl([request_line("ok"), request_line("no", "[[sim:status=400]] x")]))
    errored = invoke(cli, "submit", str(path), "--endpoint", "simulator").stdout.strip()
    clean = submit(cli, tmp_path)
    canceled = submit(cli, tmp_path)
    ran = invoke(cli, "run", errored, clean, "-q")
    invoke(cli, "cancel", canceled)

    watched = {
        batch_id: invoke(cli, "status", batch_id, "--watch", "--interval", "0.05").exit_code
        for batch_id in (errored, clean, canceled)
    }

    assert ran.exit_code == 3
    assert watched == {errored: 3, clean: 0, canceled: 7}
    # Without --watch, status only reads: 0.
    assert invoke(cli, "status", errored).exit_code == 0


# -- estimate -----------------------------------------------------------------------------------


def test_estimate_names_an_unpriced_model_once_and_counts_one_request(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "gpt.jsonl"
    path.write_bytes(jsonl([request_line("a", model="gpt-4o")]))

    result = invoke(cli, "estimate", str(path), "--endpoint", "anthropic")

    assert result.exit_code == 0, result.output
    assert result.stdout.count("gpt-4o: add [prices.") == 1
    assert "no price for" not in result.stdout
    assert "  gpt-4o: 1 request, " in result.stdout
    assert "1 requests" not in result.stdout


# -- Anthropic result lines -------------------------------------------------------------------


def test_anthropic_result_lines_are_compact_json_whatever_spacing_the_server_used(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.jsonl"
    lines = [request_line("ok", "hello  there, you: two"), request_line("no", "[[sim:status=400]]")]
    path.write_bytes(jsonl(lines))
    batch_id = invoke(cli, "submit", str(path), "--endpoint", "simulator").stdout.strip()
    invoke(cli, "run", batch_id, "-q")

    exported = invoke(cli, "results", batch_id).stdout.splitlines()

    assert len(exported) == 2
    for line in exported:
        assert line == json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False)
    # What is inside strings stays exactly as received, escapes and spaces included.
    from batchrun.export.anthropic import compact_json

    assert compact_json('{"a" : "x  \\ud800 \\" y" ,\n "b": [1, 2]}') == (
        '{"a":"x  \\ud800 \\" y","b":[1,2]}'
    )
