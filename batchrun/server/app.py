"""The server as one ASGI app: the Batches API, the dashboard, ``/metrics`` and
``/openapi.json``, with every error in Anthropic's shape.

:func:`create_app` puts the parts together; its lifespan starts what runs beside the
routes (the in-process workers, the expiry of overdue batches) and stops it on shutdown,
letting requests in flight be recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from batchrun import __version__
from batchrun.server.api import Api
from batchrun.server.errors import ApiError, error_json, new_request_id
from batchrun.server.hosts import HostCheck, HostPolicy
from batchrun.server.keys import ServerKeys
from batchrun.server.service import BatchService
from batchrun.server.workers import InProcessWorkers

log = logging.getLogger(__name__)


def create_app(
    service: BatchService,
    keys: ServerKeys,
    *,
    workers: InProcessWorkers | None = None,
    public_url: str | None = None,
    hosts: HostPolicy | None = None,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The app serving ``service`` to holders of ``keys``; ``workers`` dispatch in this
    process (None: other processes do); ``hosts`` says which Host headers are served
    (default: those of a server with ``keys`` and ``public_url`` and no --allowed-hosts);
    ``routers`` are mounted beside the API."""
    if hosts is None:
        hosts = HostPolicy.of(authenticated=keys.required, public_url=public_url)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        expiring = asyncio.create_task(service.expire_forever(), name="batchrun-expire")
        if workers is not None:
            await workers.start()
        try:
            yield
        finally:
            expiring.cancel()
            await asyncio.gather(expiring, return_exceptions=True)
            if workers is not None:
                await workers.stop()

    app = FastAPI(
        title="batchrun",
        version=__version__,
        description="Anthropic's Message Batches API over batchrun's job store.",
        lifespan=lifespan,
        # The interactive docs pages load scripts from a CDN; the document alone is served.
        docs_url=None,
        redoc_url=None,
    )
    api = Api(service, keys, public_url=public_url, hosts=hosts)
    app.include_router(api.router)
    for router in routers:
        app.include_router(router)
    if workers is not None:
        app.state.workers = workers
    app.state.api = api
    _error_handlers(app)
    # Outermost: a Host the server does not answer to reaches no route.
    app.add_middleware(HostCheck, policy=hosts)
    return app


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> Response:
        return _error_response(ApiError(400, _validation_message(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no such route: {request.method} {request.url.path[:200]}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:200]}"
        else:
            message = str(exc.detail)
        return _error_response(ApiError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error_response(ApiError(500, "internal server error; the server's log says why"))


def _error_response(error: ApiError) -> Response:
    request_id = new_request_id()
    headers = {"request-id": request_id}
    if error.status == 401:
        headers["www-authenticate"] = 'Bearer realm="batchrun"'
    return Response(
        error_json(error, request_id),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )


def _validation_message(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as one line: ``limit: Input should be a valid integer``."""
    parts = []
    for error in errors[:10]:
        location = [str(part) for part in error.get("loc", ()) if part not in ("query", "path")]
        name = ".".join(location) or "request"
        parts.append(f"{name}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is invalid"
