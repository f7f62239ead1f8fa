"""``GET /metrics``: the job database (and this process's own counters) in Prometheus's text
format, for holders of a server key (a scraper sends ``Authorization: Bearer KEY``).

A snapshot costs a few grouped reads (about 0.4 s with an open batch of 100,000 requests;
see :class:`~batchrun.ops.metrics.MetricsGatherer`), so scrapes take turns and one made
within ``MIN_SCRAPE_INTERVAL_S`` of the last is answered from it: several Prometheus
servers, or a scraper gone wild, cost no more than one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from batchrun.ops.metrics import MetricsGatherer, ProcessCounters
from batchrun.server.keys import ServerKeys, request_owner
from batchrun.server.metrics import render_metrics
from batchrun.server.service import BatchService

# A scrape this soon after the last one gets the same figures.
MIN_SCRAPE_INTERVAL_S = 1.0


def metrics_router(
    service: BatchService,
    keys: ServerKeys,
    counters: Callable[[], ProcessCounters | None],
) -> APIRouter:
    """The ``/metrics`` route over ``service``'s store; ``counters`` gives this process's
    own counts (the 429s of the in-process workers; None when it sends nothing)."""
    router = APIRouter()
    gatherer = MetricsGatherer(service.store, prices=service.prices)
    turn = asyncio.Lock()
    last: list[tuple[float, bytes, str]] = []

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        request_owner(keys, request.headers)
        loop = asyncio.get_running_loop()
        async with turn:
            if not last or loop.time() - last[0][0] >= MIN_SCRAPE_INTERVAL_S:
                snapshot = await service.call(gatherer.gather, process=counters())
                body, content_type = render_metrics(snapshot)
                last[:] = [(loop.time(), body, content_type)]
            _, body, content_type = last[0]
        return Response(body, headers={"content-type": content_type})

    return router
