"""Whole runs of streamed requests against the in-process simulator, in virtual time
(looptime): cut streams are retried until they succeed, and each stored result is the Message
the simulator made."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from batchrun.simulator import FaultRates, SimulatorConfig, create_app
from batchrun.store.store import Store
from batchrun.transport.endpoints import SIMULATOR, builtin_endpoints
from tests.conftest import request_line, submit
from tests.dispatch.helpers import dispatch, results_by_id

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


async def test_cut_streams_are_retried_and_every_result_is_the_simulators_message(
    sqlite_store: Store,
) -> None:
    config = SimulatorConfig(
        seed=4,
        output_tokens=2_000,
        latency_s=2.0,
        latency_per_output_token_s=0.01,
        faults=FaultRates(stream_cut=0.3),
        log_messages=True,
    )
    app = create_app(config)
    lines = [request_line(f"r{i}", f"question {i}", max_tokens=32_000) for i in range(30)]
    batch_id = submit(sqlite_store, lines)
    # 32,000 max_tokens: streamed by the SDK's rule, without any setting.
    await dispatch(sqlite_store, batch_id, app)

    stats = app.stats
    cuts = stats.by_status["cut"]
    assert cuts > 0
    assert stats.by_status == {"cut": cuts, "200": 30}
    assert stats.streamed == stats.received == 30 + cuts
    results = results_by_id(sqlite_store, batch_id)
    assert {result["state"] for result in results.values()} == {"succeeded"}
    made = {json.loads(entry.message)["id"]: entry.message for entry in stats.log if entry.message}
    stored = [result["body"] for result in results.values()]
    assert sorted(made) == sorted(body["id"] for body in stored)  # type: ignore[index]
    for body in stored:
        assert body == json.loads(made[body["id"]])  # type: ignore[index]


async def test_a_threshold_of_0_in_the_endpoint_streams_short_requests_too(
    sqlite_store: Store,
) -> None:
    app = create_app(SimulatorConfig(output_tokens=10, log_messages=True))
    batch_id = submit(sqlite_store, [request_line(f"r{i}") for i in range(3)])
    endpoint = replace(builtin_endpoints({})[SIMULATOR], stream_threshold_tokens=0)

    await dispatch(sqlite_store, batch_id, app, endpoint=endpoint)

    assert app.stats.streamed == 3
    assert {result["state"] for result in results_by_id(sqlite_store, batch_id).values()} == {
        "succeeded"
    }
