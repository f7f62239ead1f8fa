"""The routes beside the API: the dashboard and ``/metrics``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastapi import APIRouter

from batchrun.server.dashboard import dashboard_router
from batchrun.server.keys import ServerKeys
from batchrun.server.scrape import metrics_router
from batchrun.server.service import BatchService

if TYPE_CHECKING:
    from batchrun.server.workers import InProcessWorkers


def extra_routers(
    service: BatchService, keys: ServerKeys, workers: InProcessWorkers | None
) -> Sequence[APIRouter]:
    """The dashboard's and the metrics' routers for ``service`` (``workers``: the
    in-process ones, whose own counters the metrics add)."""
    return (
        dashboard_router(service, keys),
        metrics_router(service, keys, workers.counters if workers is not None else lambda: None),
    )
