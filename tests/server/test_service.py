"""The service behind the routes, on a real store: polls of one batch share one read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from batchrun.client import Client
from batchrun.server.service import BatchService
from batchrun.store.store import Store
from tests.conftest import request_line, submit


@pytest.mark.asyncio
async def test_an_asker_that_goes_away_leaves_the_shared_read_to_the_others(
    sqlite_store: Store, tmp_path: Path
) -> None:
    batch_id = submit(sqlite_store, [request_line("a")])
    client = Client(env={"HOME": str(tmp_path)}, cwd=tmp_path)
    service = BatchService(
        sqlite_store,
        known=client.endpoints(),
        prices=client.prices(),
        env={},
        default_endpoint="simulator",
    )
    try:
        first = asyncio.create_task(service.get(None, batch_id))
        second = asyncio.create_task(service.get(None, batch_id))
        await asyncio.sleep(0)  # both wait on the one read now
        first.cancel()
        summary = await second
        assert summary.id == batch_id
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        service.close()
