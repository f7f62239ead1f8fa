"""Exit codes are defined once (batchrun.errors) and the docs' table is that definition."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from batchrun import __version__
from batchrun.cli.app import app
from batchrun.errors import (
    EXIT_CODES,
    BatchrunError,
    ExitCode,
    RunLockedError,
)

COMMANDS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "commands.md"


def test_the_docs_table_of_exit_codes_is_the_one_in_the_code() -> None:
    section = COMMANDS_PAGE.read_text().split("## Exit codes", 1)[1]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.MULTILINE)

    assert [(int(code), meaning) for code, meaning in rows] == [
        (int(code), meaning) for code, meaning in EXIT_CODES.items()
    ]


def test_every_error_carries_its_exit_code() -> None:
    def tree(cls: type[BatchrunError]) -> list[type[BatchrunError]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in tree(child))]

    codes = {cls.__name__: cls.exit_code for cls in tree(BatchrunError)}

    assert set(codes.values()) <= set(EXIT_CODES)
    assert codes["RunLockedError"] == ExitCode.LOCKED == RunLockedError().exit_code
    assert codes["InputFileError"] == ExitCode.ERROR


def test_version_prints_without_a_command() -> None:
    result = CliRunner().invoke(app, ["--version"])

    assert result.exit_code == 0
    assert result.stdout == f"batchrun {__version__}\n"
