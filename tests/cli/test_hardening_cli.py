"""What a new user (and a careless one) meets at the command line: one clear line and the
right exit code for every mistake, nothing half-written, nothing cut, nothing swallowed."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchrun.cli.app import app
from tests.clitools import BATCHRUN, clean_env, invoke, runner
from tests.conftest import jsonl, request_line


@pytest.fixture
def cli(sqlite_url: str, tmp_path: Path) -> CliRunner:
    return runner(sqlite_url, HOME=str(tmp_path))


def submitted(cli: CliRunner, tmp_path: Path, lines: list[dict[str, object]], *args: str) -> str:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines))
    result = invoke(cli, "submit", str(path), "--endpoint", "simulator", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def finished(cli: CliRunner, tmp_path: Path, count: int = 2) -> str:
    batch_id = submitted(cli, tmp_path, [request_line(f"r{i}") for i in range(count)])
    assert invoke(cli, "run", batch_id, "-q").exit_code == 0
    return batch_id


# -- results -o never replaces what is not a regular file -------------------------------------


def test_results_refuse_to_replace_devices_pipes_and_links_to_them(
    cli: CliRunner, tmp_path: Path
) -> None:
    batch_id = finished(cli, tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "null-link"
    link.symlink_to("/dev/null")

    for target, kind in ((fifo, "a named pipe"), (link, "a character device")):
        result = invoke(cli, "results", batch_id, "-o", str(target))
        assert result.exit_code == 1
        assert kind in result.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_results_through_a_link_to_a_file_replace_the_file_and_keep_the_link(
    cli: CliRunner, tmp_path: Path
) -> None:
    batch_id = finished(cli, tmp_path)
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "latest.jsonl"
    link.symlink_to(real)

    result = invoke(cli, "results", batch_id, "-o", str(link))

    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert len(real.read_text().splitlines()) == 2


def test_results_get_a_new_files_permissions_or_keep_the_replaced_ones(
    cli: CliRunner, tmp_path: Path
) -> None:
    batch_id = finished(cli, tmp_path)
    private = tmp_path / "private.jsonl"
    private.write_text("old\n")
    private.chmod(0o600)
    umask = os.umask(0o027)
    try:
        made = invoke(cli, "results", batch_id, "-o", str(tmp_path / "new.jsonl"))
        kept = invoke(cli, "results", batch_id, "-o", str(private))
    finally:
        os.umask(umask)

    assert made.exit_code == kept.exit_code == 0, made.output + kept.output
    # Not the temporary file's 0600: what open() would have made, and what was there.
    assert stat.S_IMODE((tmp_path / "new.jsonl").stat().st_mode) == 0o640
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert len(private.read_text().splitlines()) == 2


def test_output_to_a_full_disk_is_one_line_and_exit_1(sqlite_url: str, tmp_path: Path) -> None:
    env = clean_env(sqlite_url, HOME=str(tmp_path))
    subprocess.run([BATCHRUN, "db", "upgrade"], env=env, check=True, capture_output=True)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [BATCHRUN, "list", "--json"], env=env, stdout=full, stderr=subprocess.PIPE, text=True
        )

    assert done.returncode == 1
    assert done.stderr == "error: cannot write the output: No space left on device\n"


# -- values out of range are refused at submit, with the line -----------------------------------


@pytest.mark.parametrize(
    ("max_tokens", "problem"),
    [
        (2**31, "params.max_tokens is 2147483648; it can be at most 2,147,483,647"),
        (2**63, "params.max_tokens is 9223372036854775808; it can be at most 2,147,483,647"),
        (1e15, "params.max_tokens is 1000000000000000.0; it can be at most 2,147,483,647"),
    ],
)
def test_a_max_tokens_no_model_could_write_is_refused(
    cli: CliRunner, tmp_path: Path, max_tokens: float, problem: str
) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl([request_line("a", max_tokens=max_tokens)]))  # type: ignore[arg-type]

    result = invoke(cli, "submit", str(path), "--endpoint", "simulator")

    assert result.exit_code == 1
    assert f"big.jsonl:1: {problem}" in result.stderr
    assert "write 18446744073709551616" not in result.stderr


def test_a_model_name_longer_than_any_is_refused(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(jsonl([request_line("a", model="m" * 100_000)]))

    result = invoke(cli, "submit", str(path), "--endpoint", "simulator")

    assert result.exit_code == 1
    assert "long.jsonl:1: params.model is 100,000 characters long" in result.stderr
    assert "m" * 1000 not in result.stderr


# -- bad database URLs, durations, stdin ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://user@host/db", "batchrun cannot keep its jobs in mysql"),
        ("http://example.com", "batchrun cannot keep its jobs in http"),
        ("postgresql+psycopg2://u@h/d", "asks for the psycopg2 driver"),
        ("sqlite:///x.db?timeout=abc", "timeout is 'abc'; it must be a number of seconds"),
        ("not a url", "the database URL is not valid"),
    ],
)
def test_a_database_url_batchrun_cannot_use_is_one_line(
    tmp_path: Path, url: str, says: str
) -> None:
    result = CliRunner().invoke(app, ["--db", url, "list"], env={"HOME": str(tmp_path)})

    assert result.exit_code == 1
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_postgres_without_its_driver_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a plain `pip install batchrun-llm`: importing psycopg fails.
    monkeypatch.setitem(sys.modules, "psycopg", None)

    result = CliRunner().invoke(
        app, ["--db", "postgresql://u@127.0.0.1/d", "list"], env={"HOME": str(tmp_path)}
    )

    assert result.exit_code == 1
    assert "pip install 'batchrun-llm[postgres]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["submit", "x.jsonl", "--expires-in", "999999999d"], "--expires-in"),
        (["submit", "x.jsonl", "--expires-in", "soon"], "--expires-in"),
        (["run", "--max-runtime", "-1"], "--max-runtime"),
        (["prune", "--older-than", "forever"], "--older-than"),
    ],
)
def test_a_value_a_flag_cannot_take_is_a_usage_error(
    cli: CliRunner, args: list[str], flag: str
) -> None:
    result = invoke(cli, *args)

    assert result.exit_code == 2
    assert flag in result.output


def test_submit_from_a_closed_stdin_says_so(sqlite_url: str, tmp_path: Path) -> None:
    env = clean_env(sqlite_url, HOME=str(tmp_path))
    done = subprocess.run(
        [BATCHRUN, "submit", "-", "--endpoint", "simulator"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.close(0),
    )

    assert done.returncode == 1
    assert "standard input is closed" in done.stderr


# -- user data is never read as markup; ids are never cut -------------------------------------


def test_markup_in_names_and_errors_prints_as_it_is(cli: CliRunner, tmp_path: Path) -> None:
    batch_id = submitted(
        cli, tmp_path, [request_line("a", model="odd-[/x]-model")], "--name", "[/bold] x"
    )
    invoke(cli, "run", batch_id, "-q")

    listed = invoke(cli, "list")
    shown = invoke(cli, "status", batch_id)

    assert listed.exit_code == 0, listed.output
    assert "[/bold] x" in listed.stdout
    assert shown.exit_code == 0, shown.output
    assert 'no price for odd-[/x]-model; add [prices."MODEL"]' in shown.stdout.replace("\n", "")


def test_list_to_a_pipe_is_one_whole_line_per_batch(cli: CliRunner, tmp_path: Path) -> None:
    first = submitted(cli, tmp_path, [request_line("a")])
    second = submitted(cli, tmp_path, [request_line("b")], "--name", "second one")

    listed = invoke(cli, "list")

    lines = listed.stdout.splitlines()
    assert lines[0].split("\t") == [
        "id",
        "name",
        "status",
        "endpoint",
        "requests",
        "done",
        "errored",
        "created (UTC)",
    ]
    assert [line.split("\t")[:2] for line in lines[1:]] == [[second, "second one"], [first, ""]]


# -- help -----------------------------------------------------------------------------------


def helped(*args: str) -> str:
    """The installed command's help, as a user sees it in a wide terminal."""
    done = subprocess.run(
        [BATCHRUN, *args],
        env={**os.environ, "COLUMNS": "120", "TERM": "dumb"},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_help_answers_to_h_shows_examples_and_no_bool_types() -> None:
    run_help = helped("run", "-h")
    simulate_help = helped("simulate", "--help")

    assert "Examples:" in run_help
    assert "batchrun run --forever --max-runtime 55m --quiet" in run_help
    assert "<bool>" not in run_help
    assert "--no-ratelimit-headers" in simulate_help
    assert "--no-no-" not in simulate_help
    assert "--install-completion" in helped("--help")


def test_the_shell_completes_commands_and_options() -> None:
    def completions(words: str) -> list[str]:
        done = subprocess.run(
            [BATCHRUN],
            env={
                **os.environ,
                "_BATCHRUN_COMPLETE": "complete_bash",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split()) - 1),
            },
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.split()

    assert completions("batchrun su") == ["submit"]
    assert completions("batchrun run --max-r") == ["--max-runtime"]
    assert "complete -o default -F _batchrun_completion batchrun" in helped(
        "--show-completion", "bash"
    )


def test_batchrun_imports_posix_only_modules_only_where_it_uses_them() -> None:
    package = Path(__file__).resolve().parents[2] / "batchrun"
    at_top = [
        path.name
        for path in package.rglob("*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Import) and any(a.name in ("fcntl", "msvcrt") for a in node.names)
    ]

    assert at_top == []


# -- delete and prune -------------------------------------------------------------------------


def test_delete_removes_an_ended_batch_and_refuses_one_that_runs(
    cli: CliRunner, tmp_path: Path
) -> None:
    ended = finished(cli, tmp_path)
    waiting = submitted(cli, tmp_path, [request_line("w")])

    deleted = invoke(cli, "delete", ended)
    refused = invoke(cli, "delete", waiting)
    missing = invoke(cli, "status", ended)

    assert deleted.exit_code == 0, deleted.output
    assert refused.exit_code == 1
    assert f"batch {waiting} has not ended; only ended batches can be deleted" in refused.stderr
    assert missing.exit_code == 1
    assert [b["id"] for b in json.loads(invoke(cli, "list", "--json").stdout)["data"]] == [waiting]


def test_prune_deletes_what_ended_before_the_retention_and_shrinks_the_file(
    sqlite_url: str, tmp_path: Path
) -> None:
    # A millisecond: the batch ended before prune looks, with no need to wait.
    (tmp_path / "batchrun.toml").write_text('retention = "0.001s"\n')
    cli = runner(sqlite_url, HOME=str(tmp_path))
    batch_id = finished(cli, tmp_path, count=300)
    database = Path(sqlite_url.removeprefix("sqlite:///"))
    before = database.stat().st_size

    pruned = cli.invoke(app, ["prune"], env={"BATCHRUN_CONFIG": str(tmp_path / "batchrun.toml")})

    assert pruned.exit_code == 0, pruned.output
    assert pruned.stdout.split() == [batch_id]
    assert "deleted 1 batch" in pruned.stderr
    assert database.stat().st_size < before
    assert json.loads(invoke(cli, "list", "--json").stdout)["data"] == []


def test_prune_without_an_age_says_how_to_give_one(cli: CliRunner) -> None:
    result = invoke(cli, "prune")

    assert result.exit_code == 1
    assert "--older-than 30d" in result.stderr
    assert 'retention = "30d"' in result.stderr


# -- small things -------------------------------------------------------------------------------


def test_counts_of_one_are_singular(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(jsonl([request_line("a")]))

    result = invoke(cli, "submit", str(path), "--endpoint", "simulator")

    assert "stored 1 request as batch" in result.stderr


def test_anthropic_auth_token_authenticates_the_anthropic_endpoint_as_a_bearer(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        app,
        ["endpoints", "--json"],
        env={"HOME": str(tmp_path), "ANTHROPIC_API_KEY": None, "ANTHROPIC_AUTH_TOKEN": "tok"},
    )

    (anthropic,) = [e for e in json.loads(result.stdout)["data"] if e["name"] == "anthropic"]
    assert (anthropic["auth"], anthropic["api_key_env"], anthropic["api_key_set"]) == (
        "bearer",
        "ANTHROPIC_AUTH_TOKEN",
        True,
    )
