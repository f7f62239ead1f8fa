"""Helpers for driving the real `batchrun` CLI in tests: in-process (typer's CliRunner) and
as the installed command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from batchrun.cli.app import app

BATCHRUN = str(Path(sys.executable).parent / "batchrun")


def runner(db_url: str, **env: str | None) -> CliRunner:
    """A CliRunner whose commands use ``db_url`` and see no API key unless given one."""
    return CliRunner(env={"BATCHRUN_DATABASE_URL": db_url, "ANTHROPIC_API_KEY": None, **env})


def invoke(cli: CliRunner, *args: str, input: bytes | None = None, **env: str) -> Result:
    """Run one command in-process, as a user would type it."""
    return cli.invoke(app, list(args), input=input, env=env or None)


def stored_batches(cli: CliRunner) -> list[dict[str, Any]]:
    """Every batch in the CLI's database, as `list --json` prints them."""
    listed = invoke(cli, "list", "--json")
    assert listed.exit_code == 0, listed.output
    batches: list[dict[str, Any]] = json.loads(listed.stdout)["data"]
    return batches


def clean_env(db_url: str, **extra: str) -> dict[str, str]:
    """The environment for a subprocess: this one without ANTHROPIC_*/BATCHRUN_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    return {**env, "BATCHRUN_DATABASE_URL": db_url, **extra}


def batchrun(
    *args: str, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the installed `batchrun` command to completion."""
    return subprocess.run(
        [BATCHRUN, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
