"""A realistic Anthropic Messages API server for tests, benchmarks and the offline demo.

In-process::

    app = create_app(SimulatorConfig(limits={"*": ModelLimits(rpm=60)}))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://simulator")

On a socket: ``serve(config, port=0, on_ready=print)`` or ``with running_simulator(config) as
url: ...``. Behaviour per request can be forced with ``[[sim:...]]`` directives in the prompt
(see :mod:`batchrun.simulator.directives`).
"""

from batchrun.simulator.app import SimulatedConnectionCut, SimulatorApp, create_app
from batchrun.simulator.config import FaultRates, ModelLimits, SimulatorConfig
from batchrun.simulator.server import running_simulator, serve
from batchrun.simulator.stats import RequestLogEntry, SimulatorStats

__all__ = [
    "FaultRates",
    "ModelLimits",
    "RequestLogEntry",
    "SimulatedConnectionCut",
    "SimulatorApp",
    "SimulatorConfig",
    "SimulatorStats",
    "create_app",
    "running_simulator",
    "serve",
]
