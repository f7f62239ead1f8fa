"""A real `batchrun serve` for tests: the app on a loopback socket in a background thread,
over a real database, with the in-process simulator as its endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from batchrun.client import Client
from batchrun.server.keys import KEYS_ENV, ServerKeys
from batchrun.server.routes import extra_routers
from batchrun.server.running import Server, ServeSettings, build_server, uvicorn_config

# Long enough for MIN_KEY_CHARS; what tests present.
KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
STARTUP_TIMEOUT_S = 20.0


def server_env(home: Path, *, keys: tuple[str, ...] = (KEY_A, KEY_B)) -> dict[str, str]:
    """An environment with the server keys and nothing of the developer's."""
    return {"HOME": str(home), KEYS_ENV: ",".join(keys)}


@contextmanager
def running_server(
    db_url: str,
    env: Mapping[str, str],
    *,
    workers: int = 1,
    endpoint: str = "simulator",
    insecure_no_auth: bool = False,
    config: Path | None = None,
    **options: Any,
) -> Iterator[tuple[str, Server]]:
    """Serve ``db_url`` on a free loopback port, with uvicorn configured as `batchrun serve`
    configures it; ``options`` are more :class:`ServeSettings` fields. Yields the base URL
    and the server."""
    settings = ServeSettings(
        host="127.0.0.1",
        port=0,
        endpoint=endpoint,
        workers=workers,
        insecure_no_auth=insecure_no_auth,
        **options,
    )
    client = Client(db_url, env=env, config=config, cwd=Path(env["HOME"]))
    server = build_server(
        client,
        env=env,
        keys=ServerKeys.from_env(env),
        settings=settings,
        routers=extra_routers,
    )
    uv = uvicorn.Server(uvicorn_config(server, settings))
    thread = threading.Thread(target=uv.run, name="batchrun-test-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not uv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = uv.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", server
    finally:
        uv.should_exit = True
        thread.join(timeout=60)
        server.close()
        client.close()
