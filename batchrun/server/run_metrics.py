"""``batchrun run --metrics-port``: ``GET /metrics`` while a run runs, on a small HTTP server
of its own.

The page is ``serve``'s (a :class:`~batchrun.server.metrics.MetricsPage`: the same families,
the same once-a-second gather): the whole job database, plus the run's own 429s, which only
this process knows. It is served by the standard library's threading HTTP server from a
daemon thread, and each scrape reads the database on a thread of its own, never on the run's
event loop, so a scrape does not hold up dispatch; uvicorn and FastAPI are not loaded.

It asks for no key: it listens on a loopback address unless told otherwise, and says only
what ``serve``'s ``/metrics`` says (counts per endpoint × model, no ids, no prompts).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from batchrun.errors import BatchrunError, ConfigError
from batchrun.ops.views.metrics import MetricsGatherer, ModelLabels
from batchrun.server.metrics import MetricsPage

if TYPE_CHECKING:
    from batchrun.client import Client
    from batchrun.ops.run_types import ProcessCounters
    from batchrun.store.store import Store

log = logging.getLogger(__name__)

DEFAULT_METRICS_HOST = "127.0.0.1"
METRICS_PATH = "/metrics"
# How often the serving thread looks whether it was asked to stop.
_STOP_POLL_S = 0.1


class _Server(ThreadingHTTPServer):
    """The HTTP server, holding the page its handlers answer with."""

    # Scrapes in progress do not hold up the end of the run.
    daemon_threads = True
    page: MetricsPage


class _IPv6Server(_Server):
    """The same on an IPv6 address."""

    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """``GET /metrics``: the page; anything else: 404."""

    server: _Server

    def version_string(self) -> str:
        return "batchrun"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != METRICS_PATH:
            self._answer(404, f"not found: the metrics are at {METRICS_PATH}\n".encode())
            return
        try:
            body, content_type = self.server.page.render()
        except BatchrunError as exc:
            # A database that is away for a moment: this scrape fails, the run goes on.
            log.warning("could not read the metrics: %s", exc.message)
            self._answer(503, f"{exc.message}\n".encode())
            return
        self._answer(200, body, content_type)

    def _answer(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Not on stderr: that is the run's progress.
        log.debug("metrics: %s %s", self.address_string(), format % args)


class RunMetricsServer:
    """A ``/metrics`` server: listening from creation (a taken port fails at once), serving
    from :meth:`serve`, until :meth:`close`."""

    def __init__(self, *, host: str, port: int) -> None:
        server_class = _IPv6Server if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            raise _listen_error(exc, host, port) from None
        self._store: Store | None = None
        self._thread: threading.Thread | None = None

    def serve(self, page: MetricsPage, *, store: Store | None = None) -> None:
        """Answer scrapes with ``page`` from now on, on a daemon thread; ``store`` (the
        page's database reader) is closed with the server."""
        self._server.page = page
        self._store = store
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _STOP_POLL_S},
            name="batchrun-metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port it listens on (the one picked, when asked for port 0)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Where the metrics are: ``http://HOST:PORT/metrics``."""
        host = str(self._server.server_address[0])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}{METRICS_PATH}"

    def close(self) -> None:
        """Stop listening (a scrape in progress may finish) and close the database reader."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        if self._store is not None:
            self._store.close()


def start_run_metrics(
    client: Client,
    *,
    host: str = DEFAULT_METRICS_HOST,
    port: int,
    counters: Callable[[], ProcessCounters | None],
) -> RunMetricsServer:
    """Serve the metrics of ``client``'s database (priced with its prices) on ``host:port``
    (0: a free port) from now until :meth:`RunMetricsServer.close`, with the run's own
    ``counters`` (called from the scraping thread). ConfigError, before the database is
    opened or anything sent, when it cannot listen there (the port is taken, say)."""
    from batchrun.store.store import Store

    server = RunMetricsServer(host=host, port=port)
    try:
        prices = client.prices()
        labels = ModelLabels.of(prices, client.endpoints())
        store = Store.open(client.database_url)
    except BaseException:
        server.close()
        raise
    gatherer = MetricsGatherer(store, prices=prices, labels=labels)
    server.serve(MetricsPage(gatherer, counters), store=store)
    return server


def _listen_error(exc: OSError, host: str, port: int) -> ConfigError:
    """What stops the server listening, and how to fix it."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"cannot serve metrics on {where}: port {port} is in use by another process; "
            "choose another port, or 0 for a free one"
        )
    if exc.errno == errno.EACCES:
        return ConfigError(
            f"cannot serve metrics on {where}: permission denied (ports below 1024 need "
            "privileges); choose a port from 1024 up, or 0 for a free one"
        )
    reason = exc.strerror or str(exc)
    return ConfigError(
        f"cannot serve metrics on {where}: {reason}; give an address of this machine "
        f"({DEFAULT_METRICS_HOST} by default)"
    )
