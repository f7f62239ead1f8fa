"""Simulators for acceptance tests whose subject is not finding a limit.

Anthropic announces its limits in ``anthropic-ratelimit-*`` headers on every answer; a server
that announces nothing gets the slow start meant for an unknown limit (60 requests a minute,
growing with each answer: several seconds before a run reaches its concurrency). A test about
kills, signals or workers is not about that, so its simulator announces a limit far above
anything it sends, and the run goes at its concurrency from the first answer.
"""

from __future__ import annotations

from typing import Any

from batchrun.simulator import ModelLimits, SimulatorConfig

# Far above what any acceptance test sends: announced, never binding.
ANNOUNCED_RPM = 1_000_000


def announcing(**options: Any) -> SimulatorConfig:
    """A simulator config (``options`` as `SimulatorConfig` takes them) whose answers announce
    a limit that never binds."""
    return SimulatorConfig(limits={"*": ModelLimits(rpm=ANNOUNCED_RPM)}, **options)
