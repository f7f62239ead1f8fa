"""The batch lane: a batch's requests sent through the endpoint's server-side batch API (half
price, results within hours) instead of the Messages API. The lanes, in all: ``realtime`` is
the Messages API (the dispatcher); ``batch`` is this one; ``auto`` chooses per run
(:mod:`batchrun.batch_lane.auto`).

Holds: ``driver`` (the batch lane at work: create, reconcile, poll, cancel, import),
``reconcile`` (after a crash: was a create's batch made?), ``results`` (a provider result
line → a stored result or a request back in the queue), ``importing`` (a results file into
the store, a success winning over any other line for its request), ``auto`` (the auto
lane's choice and cut-off), ``warmth`` (when a prompt-cache group's entry is refreshed
while a provider batch holds its followers, and what the refresh sends).
May import: ``dispatch`` (the worker's database, the loop clock), ``transport`` (the batch
API client), ``store`` (the body line format), ``records``, ``errors``.

Never paying twice, in short (the architecture page has the whole design): requests move
into a provider batch (state ``provider``) in the same transaction that writes its intent
row, before the create is sent; nothing in state ``provider`` is ever claimed for real time;
requests leave it only through an import of the provider's results, or when the create is
known not to have happened (refused, or absent from the provider's list once no create in
flight could still land). When the evidence cannot settle it, the requests stay held and a
person decides (``batchrun lanes``).
"""

from __future__ import annotations

from batchrun.errors import ConfigError
from batchrun.records import Lane
from batchrun.transport.endpoints import Endpoint, Endpoints


def lane_endpoint(known: Endpoints, name: str) -> Endpoint | None:
    """The endpoint whose batch API a batch on ``name`` uses: the endpoint itself, or for a
    pool its first member with a batch API; None if there is none."""
    for endpoint in known.members(name).values():
        if endpoint.batch_api is not None:
            return endpoint
    return None


def check_lane(lane: str, known: Endpoints, name: str) -> None:
    """ConfigError unless ``lane`` is a lane and, for batch and auto, ``name`` has a batch
    API."""
    if lane not in tuple(Lane):
        raise ConfigError(f"unknown lane {lane!r}; the lanes are {', '.join(Lane)}")
    if lane != Lane.REALTIME and lane_endpoint(known, name) is None:
        raise ConfigError(
            f"endpoint {name!r} has no batch API, so --lane {lane} cannot be used with it; "
            'set batch_api = "anthropic" (or "aimlapi") in its [endpoints] table, or use '
            "--lane realtime"
        )
