"""Pools: several in-process simulators used as one endpoint, in virtual time (looptime).

Each member is its own simulator app behind its own real httpx client; the dispatcher routes
each request to a member, takes failing members out of rotation and records who answered.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping

import pytest

from batchrun.dispatch.counts import RunReport
from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.routing import FAILURES_TO_OPEN
from batchrun.dispatch.settings import DispatchConfig
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.limiter import Limiter, LimitKey
from batchrun.records import Pool, PoolMember
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.simulator.app import SimulatorApp
from batchrun.simulator.config import FaultRates, ModelLimits
from batchrun.store.store import Store
from batchrun.transport.auth import RequestHeaders
from batchrun.transport.endpoints import Endpoint
from batchrun.transport.http import create_http_client, in_process_transport
from batchrun.transport.messages import MessagesClient
from tests.conftest import request_line, submit
from tests.dispatch.helpers import FAST_RETRIES, NO_AUTH, UNPACED

# Loop logic, not SQL: SQLite only (the store's tests run both backends).
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.sqlite_only]

POOL = "claude"


async def run_pool(
    store: Store,
    batch_id: str,
    apps: Mapping[str, SimulatorApp],
    *,
    members: tuple[PoolMember, ...] | None = None,
    limits: Mapping[LimitKey, RateLimits] | None = None,
    config: DispatchConfig = FAST_RETRIES,
    headers: Mapping[str, RequestHeaders] | None = None,
) -> RunReport:
    """Run one batch on a pool of ``apps`` (endpoint name → simulator) to completion."""
    pool = Pool(POOL, members or tuple(PoolMember(name) for name in apps))
    db = WorkerDatabase(store)
    clients = [
        create_http_client(timeout_s=60, max_connections=64, transport=in_process_transport(app))
        for app in apps.values()
    ]
    try:
        senders = {
            name: MessagesClient(
                http,
                endpoint=Endpoint(name=name, base_url=f"http://{name}.invalid"),
                headers=(headers or {}).get(name, NO_AUTH),
            )
            for name, http in zip(apps, clients, strict=True)
        }
        dispatcher = Dispatcher(
            db=db,
            senders=senders,
            limiter=Limiter(limits, settings=UNPACED),
            config=config,
            pools={POOL: pool},
            clock=time.time,
        )
        return await dispatcher.run({batch_id: POOL})
    finally:
        db.close()
        for http in clients:
            await http.__aexit__(None, None, None)


def answered_by(store: Store, batch_id: str) -> Counter[str | None]:
    return Counter(row.endpoint for row in store.results.iter_details(batch_id))


async def test_a_pool_sends_at_the_sum_of_its_members_limits(store: Store) -> None:
    apps = {
        name: create_app(SimulatorConfig(latency_s=1.0, limits={"*": ModelLimits(rpm=300)}))
        for name in ("a", "b")
    }
    limits = {(name, "*"): RateLimits(rpm=300) for name in apps}
    batch_id = submit(store, [request_line(f"r{i}", f"q {i}") for i in range(300)], endpoint=POOL)
    loop = asyncio.get_running_loop()
    started = loop.time()

    report = await run_pool(store, batch_id, apps, limits=limits)

    elapsed_s = loop.time() - started
    assert store.batches.get(batch_id).counts.succeeded == 300
    assert report.rate_limited == 0
    # 300 requests at 600 a minute: 30 s, plus the gentle start and the last answers.
    assert elapsed_s < 30 + 8
    assert sum(app.stats.received for app in apps.values()) == 300
    shares = answered_by(store, batch_id)
    assert set(shares) == {"a", "b"}
    assert abs(shares["a"] - shares["b"]) <= 30


async def test_members_share_by_their_limits(store: Store) -> None:
    apps = {name: create_app(SimulatorConfig(latency_s=0.5)) for name in ("fast", "s1", "s2")}
    limits = {
        ("fast", "*"): RateLimits(rpm=600),
        ("s1", "*"): RateLimits(rpm=200),
        ("s2", "*"): RateLimits(rpm=200),
    }
    # A weight cannot take a member past its own limits: when every member is at its limit,
    # the pool sends at the sum of them, whatever the weights.
    members = (PoolMember("fast"), PoolMember("s1"), PoolMember("s2", weight=2.0))
    batch_id = submit(store, [request_line(f"r{i}", f"q {i}") for i in range(500)], endpoint=POOL)

    await run_pool(store, batch_id, apps, members=members, limits=limits)

    shares = answered_by(store, batch_id)
    assert sum(shares.values()) == 500
    assert shares["fast"] == pytest.approx(300, abs=25)
    assert shares["s1"] == pytest.approx(100, abs=20)
    assert shares["s2"] == pytest.approx(100, abs=20)


async def test_members_without_limits_share_by_their_weights(store: Store) -> None:
    apps = {name: create_app(SimulatorConfig(latency_s=1.0)) for name in ("heavy", "light")}
    members = (PoolMember("heavy", weight=3.0), PoolMember("light"))
    batch_id = submit(store, [request_line(f"r{i}", f"q {i}") for i in range(400)], endpoint=POOL)

    await run_pool(store, batch_id, apps, members=members)

    shares = answered_by(store, batch_id)
    assert shares["heavy"] == pytest.approx(300, abs=30)
    assert shares["light"] == pytest.approx(100, abs=30)


async def test_a_failing_member_is_taken_out_and_the_others_finish_the_batch(
    store: Store,
) -> None:
    apps = {
        "good": create_app(SimulatorConfig(latency_s=0.5)),
        "down": create_app(SimulatorConfig(faults=FaultRates(error_500=1.0))),
    }
    batch_id = submit(store, [request_line(f"r{i}", f"q {i}") for i in range(200)], endpoint=POOL)

    await run_pool(store, batch_id, apps)

    batch = store.batches.get(batch_id)
    assert batch.counts.succeeded == 200
    assert answered_by(store, batch_id) == {"good": 200}
    # Taken out after FAILURES_TO_OPEN failures in a row; then one lone probe per opening
    # (10 s, 20 s, ...) while the run lasts.
    assert apps["down"].stats.received <= FAILURES_TO_OPEN + 4
    health = store.health.of_endpoints(["down", "good"])
    assert health["down"].state == "open"
    assert "good" not in health


async def test_bad_credentials_take_one_member_out_with_one_401_and_the_batch_goes_on(
    store: Store,
) -> None:
    apps = {
        "good": create_app(SimulatorConfig(latency_s=0.5)),
        "locked": create_app(SimulatorConfig(required_api_key="sk-right")),
    }
    batch_id = submit(store, [request_line(f"r{i}", f"q {i}") for i in range(100)], endpoint=POOL)

    report = await run_pool(store, batch_id, apps)

    batch = store.batches.get(batch_id)
    assert report.paused == {}
    assert batch.counts.succeeded == 100
    assert apps["locked"].stats.received == 1
    assert answered_by(store, batch_id) == {"good": 100}
    health = store.health.of_endpoints(["locked"])["locked"]
    assert health.state == "halted"
    assert health.reason is not None and "authentication failed" in health.reason


async def test_when_every_member_refuses_the_key_the_batch_pauses_after_one_401_each(
    store: Store,
) -> None:
    apps = {name: create_app(SimulatorConfig(required_api_key="sk-right")) for name in ("a", "b")}
    batch_id = submit(store, [request_line(f"r{i}") for i in range(50)], endpoint=POOL)

    report = await run_pool(store, batch_id, apps)

    assert batch_id in report.paused
    assert "endpoint a" in report.paused[batch_id]
    assert "endpoint b" in report.paused[batch_id]
    assert [app.stats.received for app in apps.values()] == [1, 1]
    assert store.batches.get(batch_id).counts.processing == 50


def cached_request(custom_id: str, system: str) -> dict[str, object]:
    line = request_line(custom_id, f"question {custom_id}")
    params = line["params"]
    assert isinstance(params, dict)
    params["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    return line


async def test_requests_sharing_a_cached_prefix_go_to_one_member(store: Store) -> None:
    apps = {name: create_app(SimulatorConfig(latency_s=0.5)) for name in ("a", "b", "c")}
    prompts = [f"You are assistant number {n}. " * 20 for n in range(12)]
    lines = [cached_request(f"r{i}", prompts[i % len(prompts)]) for i in range(120)]
    batch_id = submit(store, lines, endpoint=POOL)

    await run_pool(store, batch_id, apps)

    member_of: dict[str, set[str | None]] = {}
    for row in store.results.iter_details(batch_id):
        index = int(row.custom_id[1:]) % len(prompts)
        member_of.setdefault(prompts[index], set()).add(row.endpoint)
    # Each prefix stayed on one member, and the prefixes are spread over the members.
    assert all(len(members) == 1 for members in member_of.values())
    assert len({next(iter(m)) for m in member_of.values()}) >= 2


async def test_a_shared_prefix_spills_to_a_second_member_when_its_own_cannot_keep_up(
    store: Store,
) -> None:
    apps = {name: create_app(SimulatorConfig(latency_s=0.5)) for name in ("a", "b")}
    limits = {(name, "*"): RateLimits(rpm=120) for name in apps}
    lines = [cached_request(f"r{i}", "One long shared system prompt. " * 50) for i in range(80)]
    batch_id = submit(store, lines, endpoint=POOL)
    loop = asyncio.get_running_loop()
    started = loop.time()

    await run_pool(store, batch_id, apps, limits=limits)

    shares = answered_by(store, batch_id)
    # Both members work (80 requests at 240 a minute: 20 s, not the 40 s of one member).
    assert min(shares.values()) >= 25
    assert loop.time() - started < 30


async def test_a_member_gets_the_model_name_it_knows(store: Store) -> None:
    apps = {name: create_app(SimulatorConfig(latency_s=0.2)) for name in ("a", "gw")}
    members = (
        PoolMember("a"),
        PoolMember("gw", models={"claude-sonnet-4-5": "vendor/claude-sonnet-4.5"}),
    )
    batch_id = submit(store, [request_line(f"r{i}") for i in range(40)], endpoint=POOL)

    await run_pool(store, batch_id, apps, members=members)

    assert set(apps["gw"].stats.per_model) == {"vendor/claude-sonnet-4.5"}
    assert set(apps["a"].stats.per_model) == {"claude-sonnet-4-5"}
    assert store.batches.get(batch_id).counts.succeeded == 40
