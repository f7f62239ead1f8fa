"""`batchrun run --metrics-port` in a real process: /metrics answers while the run runs, its
counters move and agree at the end with `status --json` and the run's own summary, it stops
with the run, and a port in use stops the command before anything is sent."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchrun.simulator import running_simulator
from batchrun.store.store import Store
from tests.acceptance.servers import announcing
from tests.clitools import BATCHRUN, batchrun, clean_env, invoke, runner
from tests.conftest import request_line, submit

pytestmark = pytest.mark.acceptance

REQUESTS = 60
RATE_LIMITED = 4
LIMITED_ONCE = " [[sim:status=429:times=1:retry_after=0.2]]"
OPERATIONS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
OPEN_STATES = ("queued", "running", "provider")


class Lines:
    """A process's stderr, read on a thread as it comes (so the pipe never fills)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self._stream = process.stderr
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout_s: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} on stderr: {''.join(self.lines)}")

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def stored_batch(
    db_url: str, count: int, *, endpoint: str = "simulator", rate_limited: int = 0
) -> str:
    """A batch of ``count`` requests, stored as `submit` stores it, of which the first
    ``rate_limited`` get one 429 each from the simulator; returns its id."""
    store = Store.open(db_url)
    try:
        lines = [
            request_line(f"r{i}", f"q {i}" + (LIMITED_ONCE if i < rate_limited else ""))
            for i in range(count)
        ]
        return submit(store, lines, endpoint=endpoint)
    finally:
        store.close()


def scrape(http: httpx.Client, url: str) -> tuple[str, dict[str, float]]:
    """The page, and every sample summed by name and state or kind: ``name{state}``."""
    response = http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = sample.name
            if label := sample.labels.get("state") or sample.labels.get("kind"):
                key += "{" + label + "}"
            found[key] = found.get(key, 0.0) + sample.value
    return response.text, found


@pytest.fixture
def sim_config(tmp_path: Path) -> Iterator[Path]:
    """A config file with endpoint `sim`: a simulator on a socket, sent to at 2,400 requests
    a minute."""
    with running_simulator(announcing(latency_s=0.05)) as url:
        config = tmp_path / "batchrun.toml"
        config.write_text(
            f'[endpoints.sim]\nbase_url = "{url}"\nauth = "none"\n'
            '[endpoints.sim.limits."*"]\nrpm = 2400\n'
        )
        yield config


def test_run_metrics_move_during_the_run_agree_with_status_and_stop_with_it(
    db_url: str, tmp_path: Path, sim_config: Path
) -> None:
    batch_id = stored_batch(db_url, REQUESTS, endpoint="sim", rate_limited=RATE_LIMITED)
    env = clean_env(db_url, BATCHRUN_CONFIG=str(sim_config), HOME=str(tmp_path))
    # --forever keeps the process (and its metrics) up once the work is done, so the last
    # scrape sees every request finished; Ctrl-C then ends it.
    command = ["run", "--forever", "--max-runtime", "60s", "--poll-interval", "60s"]
    process = subprocess.Popen(
        [BATCHRUN, *command, "--metrics-port", "0", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = Lines(process)
    try:
        url = stderr.wait_for(r"metrics at (http://127\.0\.0\.1:\d+/metrics)")[1]
        seen: list[dict[str, float]] = []
        with httpx.Client(timeout=10) as http:
            assert http.get(url.removesuffix("metrics") + "other").status_code == 404
            deadline = time.monotonic() + 60
            while True:
                page, numbers = scrape(http, url)
                seen.append(numbers)
                left = sum(numbers.get(f"batchrun_requests{{{state}}}", 0) for state in OPEN_STATES)
                if numbers.get("batchrun_requests{succeeded}") == REQUESTS and left == 0:
                    break
                assert time.monotonic() < deadline, numbers
                time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    errors = stderr.text()

    assert process.returncode == 130, errors
    assert "Traceback" not in errors
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    succeeded = [numbers.get("batchrun_requests{succeeded}", 0) for numbers in seen]
    sends = [numbers.get("batchrun_sends_total", 0) for numbers in seen]
    assert succeeded == sorted(succeeded) and sends == sorted(sends)
    # Scraped while the run was half way, not only before and after it.
    assert any(0 < count < REQUESTS for count in succeeded), succeeded
    assert any(0 < count < sends[-1] for count in sends), sends
    final = seen[-1]
    run = json.loads(stdout.splitlines()[0])["run"]
    assert final["batchrun_sends_total"] == run["sent"] >= REQUESTS
    assert final["batchrun_retries_total"] == run["retried"]
    assert final["batchrun_rate_limited_total"] == run["rate_limited"] == RATE_LIMITED
    assert final["batchrun_requests_in_flight"] == 0
    cli = runner(db_url, HOME=str(tmp_path), BATCHRUN_CONFIG=str(sim_config))
    shown = invoke(cli, "status", batch_id, "--json")
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.stdout)
    assert final["batchrun_requests{succeeded}"] == status["request_counts"]["succeeded"]
    assert status["request_counts"]["processing"] == 0
    for kind in ("input", "output", "cache_creation_input", "cache_read_input"):
        assert final[f"batchrun_tokens_total{{{kind}}}"] == status["usage"][f"{kind}_tokens"]
    assert final["batchrun_cost_usd_total"] == pytest.approx(status["cost_usd"], abs=1e-6)
    assert final["batchrun_cost_usd_total"] > 0
    # Every family the docs list is served, and none they do not.
    documented = re.findall(
        r"^\| `(batchrun_\w+)` \|", OPERATIONS_PAGE.read_text(), flags=re.MULTILINE
    )
    assert sorted(documented) == sorted(re.findall(r"^# TYPE (\w+) ", page, flags=re.MULTILINE))


def test_a_port_in_use_stops_the_run_before_it_sends(sqlite_url: str, tmp_path: Path) -> None:
    batch_id = stored_batch(sqlite_url, 1)
    env = clean_env(sqlite_url, HOME=str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = batchrun("run", "--metrics-port", str(port), env=env)

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: cannot serve metrics on 127.0.0.1:{port}: port {port} is in use by another "
        "process; choose another port, or 0 for a free one"
    )
    store = Store.open(sqlite_url)
    try:
        assert store.batches.get(batch_id).counts.processing == 1
    finally:
        store.close()
