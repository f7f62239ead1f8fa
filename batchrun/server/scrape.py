"""``GET /metrics``: the job database (and this process's own counters) in Prometheus's text
format, for holders of a server key (a scraper sends ``Authorization: Bearer KEY``).

The page is a :class:`~batchrun.server.metrics.MetricsPage` (as ``run --metrics-port``'s):
scrapes take turns, and one made within a second of the last is answered from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from batchrun.ops.run_types import ProcessCounters
from batchrun.ops.views.metrics import MetricsGatherer, ModelLabels
from batchrun.server.keys import ServerKeys, request_owner
from batchrun.server.metrics import MetricsPage
from batchrun.server.service import BatchService


def metrics_router(
    service: BatchService,
    keys: ServerKeys,
    counters: Callable[[], ProcessCounters | None],
) -> APIRouter:
    """The ``/metrics`` route over ``service``'s store; ``counters`` gives this process's
    own counts (the 429s of the in-process workers; None when it sends nothing)."""
    router = APIRouter()
    labels = ModelLabels.of(service.prices, service.known)
    gatherer = MetricsGatherer(service.store, prices=service.prices, labels=labels)
    page = MetricsPage(gatherer, counters)
    # Scrapes wait for their turn here, not on a thread of the store's pool each.
    turn = asyncio.Lock()

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        request_owner(keys, request.headers)
        async with turn:
            fresh = page.recent()
            body, content_type = fresh if fresh is not None else await service.call(page.render)
        return Response(body, headers={"content-type": content_type})

    return router
