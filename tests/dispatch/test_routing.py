"""The router on its own: breakers and the gentle start, in virtual time."""

from __future__ import annotations

import asyncio
import json

import pytest

from batchrun.dispatch.routing import (
    FAILURES_TO_OPEN,
    FIRST_ANSWER_WAIT_S,
    FIRST_OPEN_S,
    Assignment,
    Halted,
    Router,
)
from batchrun.limits.limiter import Limiter
from batchrun.records import Halt, Pool, PoolMember, Retryable, Succeeded, Usage, error_body
from tests.conftest import request_line

POOL = Pool("p", (PoolMember("a"), PoolMember("b")))
PARAMS = json.dumps(request_line("x")["params"])
FAILED = Retryable(reason="the connection failed", error=error_body("api_error", "down"))
OK = Succeeded(model="m", stop_reason="end_turn", usage=Usage(10, 5), body="{}", request_id=None)


async def take(router: Router, route: str = "p") -> Assignment:
    found = await router.assign(route, "m", PARAMS)
    assert isinstance(found, Assignment)
    return found


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_first_request_goes_alone_and_the_rest_wait_for_its_answer() -> None:
    router = Router({}, Limiter())
    first = await take(router, "solo")
    assert first.probe
    second = asyncio.ensure_future(take(router, "solo"))
    await asyncio.sleep(5)
    assert not second.done()
    router.finished("solo", first, OK, latency_s=5.0)
    assert not (await second).probe


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_slow_first_answer_holds_the_others_back_only_so_long() -> None:
    router = Router({}, Limiter())
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = await take(router, "solo")
    second = await take(router, "solo")
    assert first.probe and not second.probe
    assert loop.time() - started == pytest.approx(FIRST_ANSWER_WAIT_S, abs=0.1)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_after_a_failed_first_request_the_next_one_goes_alone_again() -> None:
    router = Router({}, Limiter())
    first = await take(router, "solo")
    waiting = [asyncio.ensure_future(take(router, "solo")) for _ in range(3)]
    router.finished("solo", first, FAILED, latency_s=1.0)
    await asyncio.sleep(0.1)
    done = [task for task in waiting if task.done()]
    assert len(done) == 1 and done[0].result().probe
    # Failures say nothing of the key: after FIRST_ANSWER_WAIT_S in all, the rest go.
    await asyncio.sleep(FIRST_ANSWER_WAIT_S)
    assert all(task.done() for task in waiting)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_member_opens_after_repeated_failures_and_closes_after_a_good_probe() -> None:
    router = Router({"p": POOL}, Limiter())
    loop = asyncio.get_running_loop()

    async def round_of_two(b_outcome: Retryable | Succeeded) -> list[Assignment]:
        """Two requests at once (one per member while both are in rotation), answered."""
        pair = [await take(router), await take(router)]
        for found in pair:
            outcome = b_outcome if found.endpoint == "b" else OK
            router.finished("p", found, outcome, latency_s=0.1)
        return pair

    await round_of_two(OK)
    failures = 0
    while router.state("b").status == "closed":
        failures += sum(found.endpoint == "b" for found in await round_of_two(FAILED))
    assert failures == FAILURES_TO_OPEN
    # Out of rotation: everything goes to a.
    for _ in range(5):
        assert {found.endpoint for found in await round_of_two(OK)} == {"a"}
    await asyncio.sleep(FIRST_OPEN_S)
    # One lone probe goes to b; it fails, and b is out again, for twice as long.
    probes = [found for found in await round_of_two(FAILED) if found.endpoint == "b"]
    assert len(probes) == 1 and probes[0].probe
    assert router.state("b").status == "open"
    assert router.state("b").open_until == pytest.approx(loop.time() + 2 * FIRST_OPEN_S, abs=0.5)
    await asyncio.sleep(2 * FIRST_OPEN_S)
    await round_of_two(OK)
    assert router.state("b").status == "closed"
    assert {found.endpoint for found in await round_of_two(OK)} == {"a", "b"}


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_pool_whose_members_all_refuse_the_key_is_halted() -> None:
    router = Router({"p": POOL}, Limiter())
    refused = Halt(kind="authentication", http_status=401, detail="invalid x-api-key")
    for _ in range(2):
        found = await take(router)
        router.finished("p", found, refused, latency_s=0.1, halt_reason=f"{found.endpoint} no")
    assert router.all_halted("p")
    halted = await router.assign("p", "m", PARAMS)
    assert isinstance(halted, Halted)
    assert set(halted.reasons) == {"a no", "b no"}
