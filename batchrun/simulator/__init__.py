"""A realistic Anthropic Messages API server (with Message Batches and prompt caching) for
tests, benchmarks and the offline demo.

In-process::

    app = create_app(SimulatorConfig(limits={"*": ModelLimits(rpm=60)}))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://simulator")

On a socket: ``serve(config, port=0, on_ready=print)`` or ``with running_simulator(config) as
url: ...``. Behaviour per request can be forced with ``[[sim:...]]`` directives in the prompt
(see :mod:`batchrun.simulator.directives`).

Holds: ``app`` (the ASGI app) and ``asgi`` (its plumbing), ``config``, ``buckets`` (its own
rate limits), ``directives``, ``faults``, ``responses``, ``streaming`` (answers as
server-sent events), ``tokens`` (its own token counts), ``caching`` (prompt caching),
``batches`` and ``batch_api`` (the Message Batches API, and AIMLAPI's flavour of it),
``structured`` (answers that match the schema a request asks for, or, for a directed share,
do not), ``validation``, ``stats``, and ``server`` (uvicorn on a socket).
May import: nothing of batchrun's but the image-size formula (``batchrun.input.images``): it
is an independent oracle, so batchrun's own estimates are tested against something else.
Its names are loaded on first use, so the in-process endpoint does not load uvicorn.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchrun.simulator.app import SimulatorApp, create_app
    from batchrun.simulator.asgi import SimulatedConnectionCut, SimulatedIdleCut
    from batchrun.simulator.config import FaultRates, ModelLimits, SimulatorConfig
    from batchrun.simulator.server import running_simulator, serve
    from batchrun.simulator.stats import RequestLogEntry, SimulatorStats

_HOMES = {
    "SimulatedConnectionCut": "asgi",
    "SimulatedIdleCut": "asgi",
    "SimulatorApp": "app",
    "create_app": "app",
    "FaultRates": "config",
    "ModelLimits": "config",
    "SimulatorConfig": "config",
    "running_simulator": "server",
    "serve": "server",
    "RequestLogEntry": "stats",
    "SimulatorStats": "stats",
}
__all__ = [
    "FaultRates",
    "ModelLimits",
    "RequestLogEntry",
    "SimulatedConnectionCut",
    "SimulatedIdleCut",
    "SimulatorApp",
    "SimulatorConfig",
    "SimulatorStats",
    "create_app",
    "running_simulator",
    "serve",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batchrun.simulator' has no attribute {name!r}")
    return getattr(import_module(f"batchrun.simulator.{home}"), name)
