"""Waiting for a real process to reach a point, instead of sleeping a fixed time (a fixed sleep
is too short on a loaded machine and too long on an idle one)."""

from __future__ import annotations

import subprocess
import time

import pytest

from batchrun.simulator.app import SimulatorApp


def wait_until_received(app: SimulatorApp, count: int, worker: subprocess.Popen[str]) -> None:
    """Wait until the simulator has received ``count`` requests, while the worker runs."""
    deadline = time.monotonic() + 60
    while app.stats.received < count:
        if worker.poll() is not None:
            pytest.fail(f"the run stopped early: {worker.communicate()[1]}")
        assert time.monotonic() < deadline
        time.sleep(0.02)
