"""The simulator on a TCP socket, served by uvicorn.

:func:`serve` blocks (``batchrun simulate``); :func:`running_simulator` runs the server in a
background thread for tests and benchmarks. Both listen on loopback by default; with port 0
the system picks a free port, reported once the server listens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from batchrun.simulator.app import SimulatorApp, create_app
from batchrun.simulator.asgi import CLOSE_CONNECTION, SimulatedConnectionCut
from batchrun.simulator.config import SimulatorConfig

LOOPBACK_HOST = "127.0.0.1"
# A request hanging on purpose must not keep the server from stopping for long.
SHUTDOWN_GRACE_S = 2
STARTUP_TIMEOUT_S = 10.0


class _HideSimulatedCuts(logging.Filter):
    """Drops uvicorn's error record for a connection the simulator cut on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedConnectionCut)


def _hide_simulated_cuts() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, _HideSimulatedCuts) for existing in logger.filters):
        logger.addFilter(_HideSimulatedCuts())


class _H11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a way for the app to drop a connection without
    answering (as a proxy's idle timeout does): ``scope[CLOSE_CONNECTION]()``. An app that
    raises without having answered otherwise gets uvicorn's 500."""

    def handle_events(self) -> None:
        super().handle_events()
        # The request's task has been created but has not run yet: it sees the key.
        if self.scope is not None:
            self.scope.setdefault(CLOSE_CONNECTION, self.transport.close)  # type: ignore[misc]


class _Server(uvicorn.Server):
    """A uvicorn server that reports its port once it listens."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[int], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None:
            self._on_ready(self.servers[0].sockets[0].getsockname()[1])


def _server(
    app: SimulatorApp,
    host: str,
    port: int,
    on_ready: Callable[[int], None] | None,
    *,
    configure_logging: bool,
) -> _Server:
    options: dict[str, Any] = {}
    if not configure_logging:
        # Leave logging to the host program (pytest captures it); only set uvicorn's levels.
        options["log_config"] = None
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=_H11Protocol,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        **options,
    )
    _hide_simulated_cuts()
    return _Server(config, on_ready)


def serve(
    config: SimulatorConfig,
    host: str = LOOPBACK_HOST,
    port: int = 0,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve the simulator until interrupted (SIGINT/SIGTERM in the main thread).

    ``on_ready`` gets the actual port once the socket listens (useful with ``port=0``).
    """
    _server(create_app(config), host, port, on_ready, configure_logging=True).run()


@contextmanager
def running_simulator(
    config: SimulatorConfig | None = None, *, app: SimulatorApp | None = None
) -> Iterator[str]:
    """Run a simulator on a free loopback port in a background thread.

    Yields its base URL (``http://127.0.0.1:PORT``) and stops the server, waiting for its
    thread, on exit. Pass ``app`` instead of ``config`` to keep a handle on ``app.stats``.
    """
    if app is None:
        app = create_app(config)
    elif config is not None:
        raise ValueError("running_simulator takes a config or an app, not both")
    ports: list[int] = []
    ready = threading.Event()

    def on_ready(port: int) -> None:
        ports.append(port)
        ready.set()

    server = _server(app, LOOPBACK_HOST, 0, on_ready, configure_logging=False)
    thread = threading.Thread(target=server.run, name="batchrun-simulator", daemon=True)
    thread.start()
    try:
        waited_s = 0.0
        while not ready.wait(0.05):
            waited_s += 0.05
            if not thread.is_alive() or waited_s > STARTUP_TIMEOUT_S:
                raise RuntimeError("the simulator server did not start listening")
        yield f"http://{LOOPBACK_HOST}:{ports[0]}"
    finally:
        server.should_exit = True
        thread.join()
