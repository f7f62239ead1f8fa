"""`batchrun report` on the command line: where the page goes, and what a user gets wrong."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.cli.test_cli import SAMPLES, invoke, submit_file
from tests.conftest import cli_env


@pytest.fixture
def cli(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(sqlite_url, tmp_path / "home"))


def test_the_report_of_a_run_batch_goes_to_a_file_named_after_it(
    cli: CliRunner, tmp_path: Path
) -> None:
    batch_id = submit_file(cli, SAMPLES)
    assert invoke(cli, "run", batch_id, "--quiet").exit_code == 0

    made = invoke(cli, "report", batch_id)

    assert made.exit_code == 0, made.output
    page = (tmp_path / f"report-{batch_id}.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert batch_id in page and 'id="chart-requests"' in page
    assert f"report-{batch_id}.html" in made.stderr
    # Written whole: no temporary file is left beside it.
    assert sorted(path.name for path in tmp_path.glob(".report-*")) == []


def test_the_report_goes_to_stdout_with_a_dash(cli: CliRunner) -> None:
    batch_id = submit_file(cli, SAMPLES)

    made = invoke(cli, "report", batch_id, "-o", "-")

    assert made.exit_code == 0, made.output
    assert made.stdout.startswith("<!DOCTYPE html>")
    assert made.stdout.rstrip().endswith("</html>")


def test_an_unknown_batch_is_one_line_and_no_file(cli: CliRunner, tmp_path: Path) -> None:
    made = invoke(cli, "report", "msgbatch_nope", "-o", "out.html")

    assert made.exit_code == 1
    assert "no batch 'msgbatch_nope'" in made.stderr
    assert "Traceback" not in made.output
    assert not (tmp_path / "out.html").exists()


def test_open_needs_a_file(cli: CliRunner) -> None:
    batch_id = submit_file(cli, SAMPLES)

    made = invoke(cli, "report", batch_id, "-o", "-", "--open")

    assert made.exit_code == 2
    assert "--open needs a file" in made.stderr


def test_a_directory_as_the_output_is_refused(cli: CliRunner, tmp_path: Path) -> None:
    batch_id = submit_file(cli, SAMPLES)
    (tmp_path / "dir").mkdir()

    made = invoke(cli, "report", batch_id, "-o", "dir")

    assert made.exit_code == 1
    assert made.stderr == (
        "error: dir is a directory; give the path of a regular file for the report, or -o - "
        "to write it to stdout\n"
    )
