"""The crontab entry of docs/operations.md, taken from the page and run the way cron runs it:
``env -i HOME=... PATH=/usr/bin:/bin sh -c '<the line>'`` from the home directory, with
``/srv/batchrun`` moved to a temporary directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchrun.simulator import create_app, running_simulator
from batchrun.simulator.app import SimulatorApp
from tests.acceptance.servers import announcing
from tests.clitools import batchrun, clean_env
from tests.conftest import jsonl, request_line

pytestmark = pytest.mark.acceptance

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
DOCUMENTED_HOME = "/srv/batchrun"
# What cron gives a job: no variables of the login shell, this PATH, the home directory.
CRON_PATH = "/usr/bin:/bin"


@dataclass(frozen=True)
class Crontab:
    variables: dict[str, str]
    schedule: str
    command: str


def documented_crontab() -> Crontab:
    """The ```cron block of the section "Running unattended (cron)"."""
    section = OPERATIONS.read_text().split("## Running unattended (cron)", 1)[1].split("\n## ")[0]
    (block,) = re.findall(r"```cron\n(.*?)```", section, flags=re.DOTALL)
    variables: dict[str, str] = {}
    entries: list[tuple[str, str]] = []
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if assignment := re.fullmatch(r"([A-Z_]+)=(.*)", line):
            variables[assignment[1]] = assignment[2]
            continue
        fields = line.split(maxsplit=5)
        entries.append((" ".join(fields[:5]), fields[5]))
    ((schedule, command),) = entries
    return Crontab(variables, schedule, command)


@dataclass(frozen=True)
class Installation:
    """``/srv/batchrun`` of the docs, in a temporary directory: the venv's command (a link to
    the one under test), ``batchrun.toml``, ``keys.env`` and the line pointing at them."""

    root: Path
    home: Path
    line: str
    database_url: str

    def cron(self, line: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the entry's command as cron does (stdout and stderr are what cron mails)."""
        return subprocess.run(
            ["env", "-i", f"HOME={self.home}", f"PATH={CRON_PATH}", "sh", "-c", line or self.line],
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def batchrun(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The test's own commands on the same database and config, with the key set."""
        env = clean_env(self.database_url, SIM_KEY="sk-cron-test")
        return batchrun("--config", str(self.root / "batchrun.toml"), *args, env=env)

    def submit(self, count: int) -> str:
        path = self.root / "requests.jsonl"
        path.write_bytes(jsonl([request_line(f"r{i:04d}", f"q {i}") for i in range(count)]))
        submitted = self.batchrun("submit", str(path), "--endpoint", "sim")
        assert submitted.returncode == 0, submitted.stderr
        return submitted.stdout.strip()

    def status(self, batch_id: str) -> dict[str, object]:
        shown = self.batchrun("status", batch_id, "--json")
        assert shown.returncode == 0, shown.stderr
        state: dict[str, object] = json.loads(shown.stdout)
        return state


@pytest.fixture
def simulator() -> Iterator[tuple[SimulatorApp, str]]:
    app = create_app(announcing(latency_s=0.05))
    with running_simulator(app=app) as url:
        yield app, url


def install(tmp_path: Path, url: str, *, rpm: int = 6000) -> Installation:
    root = tmp_path / "srv" / "batchrun"
    home = tmp_path / "home"
    (root / ".venv" / "bin").mkdir(parents=True)
    home.mkdir()
    (root / ".venv" / "bin" / "batchrun").symlink_to(Path(sys.executable).parent / "batchrun")
    (root / "batchrun.toml").write_text(
        f'[endpoints.sim]\nbase_url = "{url}"\napi_key_env = "SIM_KEY"\n'
        f'[endpoints.sim.limits."*"]\nrpm = {rpm}\n'
    )
    (root / "keys.env").write_text("export SIM_KEY=sk-cron-test\n")
    (root / "keys.env").chmod(0o600)
    line = documented_crontab().command.replace(DOCUMENTED_HOME, str(root))
    return Installation(root, home, line, f"sqlite:///{root}/jobs.db")


def test_the_documented_crontab_names_a_mail_address_and_everything_by_absolute_path() -> None:
    crontab = documented_crontab()

    assert "MAILTO" in crontab.variables
    assert re.fullmatch(r"(\S+ ){4}\S+", crontab.schedule)
    # Every path the command names is absolute: cron's working directory is the home.
    words = re.split(r"\s+|&&|=", crontab.command)
    relative = [w for w in words if "/" in w and not w.startswith(("/", "sqlite:////"))]
    assert relative == []
    assert f"{DOCUMENTED_HOME}/.venv/bin/batchrun" in crontab.command


def test_the_documented_crontab_line_runs_a_batch_in_crons_environment_and_mails_nothing(
    tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    app, url = simulator
    installation = install(tmp_path, url)
    batch_id = installation.submit(20)

    ran = installation.cron()

    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", "")
    state = installation.status(batch_id)
    assert state["processing_status"] == "ended"
    assert state["request_counts"] == {
        "processing": 0,
        "succeeded": 20,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert app.stats.received == 20


def test_the_documented_crontab_line_mails_one_line_when_the_last_run_still_holds_the_lock(
    tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    app, url = simulator
    installation = install(tmp_path, url, rpm=60)
    installation.submit(50)
    env = clean_env(installation.database_url, SIM_KEY="sk-cron-test")
    first = subprocess.Popen(
        [
            str(installation.root / ".venv" / "bin" / "batchrun"),
            *("--db", installation.database_url, "run", "--quiet"),
        ],
        cwd=installation.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while app.stats.received < 1:
            assert time.monotonic() < deadline, "the first run sent nothing"
            time.sleep(0.05)

        ran = installation.cron()
    finally:
        first.terminate()
        first.communicate(timeout=30)

    assert ran.returncode == 6, ran.stderr
    assert ran.stdout == ""
    (mailed,) = ran.stderr.strip().splitlines()
    assert f"another `batchrun run` (pid {first.pid}" in mailed


def test_without_the_keys_file_the_documented_line_sends_nothing_and_says_why(
    tmp_path: Path, simulator: tuple[SimulatorApp, str]
) -> None:
    app, url = simulator
    installation = install(tmp_path, url)
    installation.submit(3)
    (installation.root / "keys.env").unlink()

    ran = installation.cron()

    assert ran.returncode != 0
    assert "keys.env" in ran.stderr
    assert app.stats.received == 0
