"""Start the server: check that it may run without keys, build the app from a
:class:`~batchrun.Client`'s database and endpoints, and serve it with uvicorn until SIGINT or
SIGTERM (uvicorn's own handlers; the app's lifespan then stops the workers gracefully)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import APIRouter, FastAPI

from batchrun.errors import ConfigError
from batchrun.server.app import create_app
from batchrun.server.connections import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS,
    ConnectionLimits,
    guarded_protocol,
)
from batchrun.server.hosts import HostPolicy
from batchrun.server.keys import KEYS_ENV, ServerKeys
from batchrun.server.service import BatchService
from batchrun.server.workers import InProcessWorkers

if TYPE_CHECKING:
    from batchrun.client import Client
    from batchrun.store.store import Store

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Seconds a stopping server gives requests in flight (the workers' own grace is inside it).
SHUTDOWN_GRACE_S = 60


@dataclass(frozen=True)
class ServeSettings:
    """What ``batchrun serve`` is asked for."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # The endpoint of new batches (None: the config's default); a create may name another.
    endpoint: str | None = None
    # In-process dispatch workers; 0: separate `batchrun run --forever` workers do it.
    workers: int = 1
    public_url: str | None = None
    insecure_no_auth: bool = False
    access_log: bool = False
    # Host names served besides loopback and the public URL's (see batchrun.server.hosts).
    allowed_hosts: tuple[str, ...] = ()
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS

    def connection_limits(self) -> ConnectionLimits:
        """The deadlines and the cap of the server's connections; ConfigError for a value
        out of range."""
        for flag, value in (
            ("--header-timeout", self.header_timeout_s),
            ("--body-timeout", self.body_timeout_s),
        ):
            if not value > 0:
                raise ConfigError(f"{flag} must be more than 0 seconds, not {value:g}")
        if self.max_connections < 1:
            raise ConfigError(f"--max-connections must be 1 or more, not {self.max_connections}")
        return ConnectionLimits(self.header_timeout_s, self.body_timeout_s, self.max_connections)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_auth(keys: ServerKeys, settings: ServeSettings) -> None:
    """ConfigError unless the server has keys, or runs without them on purpose and on a
    loopback address only."""
    if keys.required:
        if settings.insecure_no_auth:
            raise ConfigError(
                f"--insecure-no-auth was given but {KEYS_ENV} holds keys; drop one of them"
            )
        return
    if not settings.insecure_no_auth:
        raise ConfigError(
            f"set {KEYS_ENV} to the keys clients must present (comma-separated), or pass "
            "--insecure-no-auth to serve without keys on a loopback address"
        )
    if not is_loopback(settings.host):
        raise ConfigError(
            f"--insecure-no-auth only serves a loopback address (127.0.0.1, ::1), not "
            f"{settings.host}; set {KEYS_ENV} to serve other hosts"
        )


@dataclass
class Server:
    """The app and what it holds open."""

    app: FastAPI
    service: BatchService
    store: Store

    def close(self) -> None:
        self.service.close()
        self.store.close()


def build_server(
    client: Client,
    *,
    env: Mapping[str, str],
    keys: ServerKeys,
    settings: ServeSettings,
    routers: Callable[[BatchService, ServerKeys, InProcessWorkers | None], Sequence[APIRouter]]
    | None = None,
) -> Server:
    """The server over ``client``'s database, endpoints and prices (and the config file's
    ``[notify]`` webhook, told by its workers)."""
    from batchrun.config.file import notify_url_of
    from batchrun.store.store import Store

    check_auth(keys, settings)
    settings.connection_limits()
    hosts = HostPolicy.of(
        authenticated=keys.required,
        public_url=settings.public_url,
        allowed_hosts=settings.allowed_hosts,
    )
    if settings.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, not {settings.workers}")
    known = client.endpoints()
    prices = client.prices()
    notify_url = notify_url_of(client.settings(), env) if settings.workers else None
    store = Store.open(client.database_url)
    workers = None
    if settings.workers:
        workers = InProcessWorkers(
            store,
            count=settings.workers,
            known=known,
            prices=prices,
            env=env,
            notify_url=notify_url,
        )
    try:
        service = BatchService(
            store,
            known=known,
            prices=prices,
            env=env,
            default_endpoint=settings.endpoint or known.default,
            on_created=workers.wake if workers is not None else None,
            sends_here=workers is not None,
        )
    except BaseException:
        store.close()
        raise
    app = create_app(
        service,
        keys,
        workers=workers,
        public_url=settings.public_url,
        hosts=hosts,
        routers=routers(service, keys, workers) if routers is not None else (),
    )
    return Server(app, service, store)


class _Uvicorn(uvicorn.Server):
    """uvicorn, telling ``on_ready`` the address once it listens."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self._on_ready(f"http://{shown}:{port}")


def uvicorn_config(server: Server, settings: ServeSettings) -> uvicorn.Config:
    """uvicorn's configuration for ``server``: its address, the connections' deadlines and
    cap (:mod:`batchrun.server.connections`), no access log unless asked for."""
    return uvicorn.Config(
        server.app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings.connection_limits()),
        log_config=None,
        access_log=settings.access_log,
        server_header=False,
        # X-Forwarded-Proto/For from a proxy on this machine (uvicorn's default trust).
        proxy_headers=True,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


def serve(
    server: Server, settings: ServeSettings, *, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM; ``on_ready`` gets the base URL once it listens."""
    try:
        _Uvicorn(uvicorn_config(server, settings), on_ready).run()
    finally:
        server.close()
