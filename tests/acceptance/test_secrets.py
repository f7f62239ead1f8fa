"""The API key never leaves the process: not into the database (nor its WAL and shared-memory
files), the logs at -vv, status, list, the results export, the report or an error message."""

from __future__ import annotations

import hashlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from tests.clitools import batchrun, clean_env
from tests.conftest import jsonl, request_line

pytestmark = pytest.mark.acceptance

CANARY = "sk-ant-SECRET-canary-1234567890"
# The key, and pieces of it that would still identify it if it were cut or reformatted.
NEEDLES = [CANARY, "SECRET-canary", "canary-1234567890"]


def test_the_api_key_reaches_no_file_log_or_output(tmp_path: Path) -> None:
    db_path = tmp_path / "batchrun.db"
    db_url = f"sqlite:///{db_path}"
    failing = tmp_path / "failing.jsonl"
    failing.write_bytes(
        jsonl(
            [
                request_line("ok", "hello"),
                request_line("bad-request", "[[sim:status=400]] x"),
                request_line("flaky", "[[sim:status=500:times=1]] x"),
                request_line("cut", "[[sim:cut=1:times=1]] x"),
                request_line("malformed", "[[sim:malformed=1]] x"),
                # A gateway that quotes the key it was given in its error message...
                request_line("echoed", "[[sim:status=400:echo_key=1]] x"),
                # ...or hands it back as the request-id and in the reply.
                request_line("echoed-ok", "[[sim:echo_key=1]] x"),
            ]
        )
    )
    refused = tmp_path / "refused.jsonl"
    refused.write_bytes(jsonl([request_line("denied", "[[sim:status=401:echo_key=1]] x")]))
    billing = tmp_path / "billing.jsonl"
    billing.write_bytes(jsonl([request_line("unpaid", "[[sim:status=402:echo_key=1]] x")]))
    app = create_app(SimulatorConfig(required_api_key=CANARY))
    outputs: list[str] = []

    def cli(*commands: tuple[list[str], int]) -> list[str]:
        """Run these (arguments, expected exit code) at once, with -vv; their stdouts."""
        with ThreadPoolExecutor(len(commands)) as pool:
            done = list(pool.map(lambda command: batchrun("-vv", *command[0], env=env), commands))
        for (args, expect), finished in zip(commands, done, strict=True):
            outputs.extend([finished.stdout, finished.stderr])
            assert finished.returncode == expect, (args, finished.stderr)
        return [finished.stdout.strip() for finished in done]

    with running_simulator(app=app) as url:
        env = clean_env(db_url, ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY=CANARY)
        cli((["db", "upgrade"], 0))
        # An open connection keeps SQLite from folding the WAL away when the CLI exits, so
        # the -wal and -shm files are there to be searched.
        holder = sqlite3.connect(db_path)
        holder.execute("SELECT count(*) FROM batches").fetchone()
        ids = cli(*((["submit", str(path)], 0) for path in (failing, refused, billing)))
        failing_id, refused_id, billing_id = ids
        cli(
            (["run", failing_id, "--max-attempts", "2", "--share"], 3),
            (["run", refused_id, "--share"], 4),
            (["run", billing_id, "--share"], 4),
        )
        cli(
            *((["status", batch_id, "--json"], 0) for batch_id in ids),
            (["status", billing_id], 0),
            (["list"], 0),
            (["list", "--json"], 0),
            (["results", failing_id, "-o", str(tmp_path / "results.jsonl")], 0),
            (["results", failing_id, "--format", "flat", "-o", str(tmp_path / "flat.jsonl")], 0),
            (["results", billing_id, "--partial"], 0),
            (["report", failing_id, "-o", str(tmp_path / "report.html")], 0),
            (["report", billing_id, "-o", str(tmp_path / "billing.html")], 0),
        )
        # The database, its -wal and -shm files, the exports (and the request files).
        files = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
        holder.close()

    # The test means something only if the key was sent, the failures happened and the
    # debug logs were on.
    key_digest = hashlib.sha256(CANARY.encode()).hexdigest()
    assert {entry.headers["api_key_sha256_prefix"] for entry in app.stats.log} == {key_digest[:12]}
    assert app.stats.by_status.get("401") == 1
    assert app.stats.by_status.get("402") == 1
    assert {"batchrun.db", "batchrun.db-wal", "batchrun.db-shm"} <= set(files)
    text = "\n".join(outputs)
    assert "DEBUG" in text
    assert "authentication failed for endpoint anthropic: check ANTHROPIC_API_KEY" in text
    exported = files["results.jsonl"].decode()
    assert "gave up after 2 attempts" in exported
    # The echoed key was cut out of the stored error and of the billing pause reason.
    assert "Invalid request (simulated). (API key presented: [redacted])" in exported
    assert "your key is [redacted]" in exported
    assert '"request_id":"[redacted]"' in files["flat.jsonl"].decode()
    assert "invalid_request_error" in files["report.html"].decode()
    assert "billing reasons: Your credit balance is too low" in text
    assert "(API key presented: [redacted])" in text
    for needle in NEEDLES:
        assert needle not in text, f"{needle!r} in the command output"
        for name, content in files.items():
            assert needle.encode() not in content, f"{needle!r} in {name}"
