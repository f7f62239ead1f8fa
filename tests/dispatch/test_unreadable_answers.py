"""Answers that could not be read (a 200 whose body is not a Message) in a pool: they count
as the member's failures for its breaker, and the request is sent once more, to another
member, before it is given up; a single endpoint keeps its own rule (a body that is not
JSON is tried once more, JSON that is no Message is final).

The decisions as tables, the router on its own in virtual time, and whole runs on pools of
in-process simulators (virtual time, looptime).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from batchrun.dispatch.decisions import (
    INVALID_RESPONSE_ERROR_TYPE,
    UNREADABLE_FROM,
    Backoff,
    Decision,
    Finish,
    Retry,
    decide,
    unreadable_from,
)
from batchrun.dispatch.routing import FAILURES_TO_OPEN, UNREADABLE_REASON, Assignment, Router
from batchrun.limits.limiter import Limiter
from batchrun.records import (
    ClaimedRequest,
    Fatal,
    Outcome,
    Pool,
    PoolMember,
    Retryable,
    Succeeded,
    Usage,
    error_body,
)
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.simulator.config import FaultRates
from batchrun.store.store import Store
from batchrun.transport.classify import classify_response
from tests.conftest import request_line, submit
from tests.dispatch.test_pools import answered_by, run_pool
from tests.hostile import message

# Loop logic, not SQL: the whole runs use SQLite only (the store's tests run both backends).
pytestmark = pytest.mark.sqlite_only

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LOGIN_PAGE = b"<!doctype html><html><body><form action=/login>Sign in</form></html>"
# What classify makes of a login page (not JSON) and of JSON of another shape.
NOT_JSON = classify_response(200, {}, LOGIN_PAGE)
NOT_A_MESSAGE = classify_response(200, {}, b'{"hello": "world"}')
OK = Succeeded(model="m", stop_reason="end_turn", usage=Usage(10, 5), body="{}", request_id=None)


def decided(
    outcome: Outcome,
    *,
    failover: bool,
    failures: int = 0,
    last_error: str | None = None,
    max_attempts: int = 8,
) -> Decision:
    request = ClaimedRequest(
        7, "msgbatch_x", "q-1", "m", 100, "{}", failures, failures, None, last_error
    )
    return decide(
        request,
        outcome,
        endpoint="garbage",
        key_hint="KEY",
        max_attempts=max_attempts,
        backoff=Backoff(initial_delay_s=1.0, max_delay_s=60.0),
        now=NOW,
        latency_ms=40,
        input_estimate=12,
        jitter=0.0,
        failover=failover,
    )


def test_answers_that_are_no_message_are_classified_unreadable() -> None:
    assert isinstance(NOT_JSON, Retryable) and NOT_JSON.unreadable
    assert isinstance(NOT_A_MESSAGE, Fatal) and NOT_A_MESSAGE.unreadable
    poisoned = classify_response(200, {}, json.dumps(message(input_tokens=2**63)).encode())
    assert isinstance(poisoned, Fatal) and poisoned.unreadable
    # A Message is no failure of anyone's.
    assert isinstance(classify_response(200, {}, json.dumps(message()).encode()), Succeeded)
    # Errors and cut connections are not: the breaker already counts those it should.
    assert not getattr(classify_response(400, {}, b"{}"), "unreadable", False)


@pytest.mark.parametrize("outcome", [NOT_JSON, NOT_A_MESSAGE], ids=["not_json", "not_a_message"])
def test_in_a_pool_an_unreadable_answer_is_sent_again_at_once_avoiding_its_member(
    outcome: Outcome,
) -> None:
    decision = decided(outcome, failover=True)

    assert isinstance(decision, Retry)
    assert decision.retry.not_before == NOW
    assert decision.retry.failures == 1
    assert decision.retry.last_error is not None
    assert decision.retry.last_error.startswith(f"{UNREADABLE_FROM}garbage: ")
    assert unreadable_from(decision.retry.last_error) == "garbage"
    assert decision.retry.failed is not None and decision.retry.failed.endpoint == "garbage"


@pytest.mark.parametrize("outcome", [NOT_JSON, NOT_A_MESSAGE], ids=["not_json", "not_a_message"])
def test_a_second_unreadable_answer_in_a_row_ends_the_request_with_what_was_sent(
    outcome: Outcome,
) -> None:
    decision = decided(outcome, failover=True, failures=1, last_error=f"{UNREADABLE_FROM}other: x")

    assert isinstance(decision, Finish)
    result = decision.result
    assert (result.result_type, result.http_status, result.endpoint) == ("errored", 200, "garbage")
    # Stored apart from the API's own errors; the error object keeps the API's type.
    assert result.error_type == INVALID_RESPONSE_ERROR_TYPE
    assert result.body is not None and json.loads(result.body)["error"]["type"] == "api_error"
    assert result.error_message is not None
    assert result.error_message.startswith(
        f"gave up after 2 attempts; last failure: {UNREADABLE_FROM}garbage: "
    )
    assert result.raw_body is not None


def test_the_last_attempt_ends_an_unreadable_answer_whatever_came_before() -> None:
    decision = decided(NOT_A_MESSAGE, failover=True, failures=2, max_attempts=3)

    assert isinstance(decision, Finish) and decision.result.result_type == "errored"


def test_without_another_member_json_that_is_no_message_stays_final() -> None:
    final = decided(NOT_A_MESSAGE, failover=False)
    assert isinstance(final, Finish)
    assert final.result.error_type == INVALID_RESPONSE_ERROR_TYPE
    # ... and a body that is not JSON is tried once more, as before.
    assert isinstance(decided(NOT_JSON, failover=False), Retry)


def test_only_an_unreadable_answer_names_a_member_to_avoid() -> None:
    assert unreadable_from(None) is None
    assert unreadable_from("HTTP 500 api_error") is None
    assert unreadable_from(f"{UNREADABLE_FROM}gw-eu.1: malformed response: x") == "gw-eu.1"


# -- the router ------------------------------------------------------------------------------

POOL = Pool("p", (PoolMember("a"), PoolMember("b")))
PARAMS = json.dumps(request_line("x")["params"])


async def take(router: Router, *, avoid: str | None = None) -> Assignment:
    found = await router.assign("p", "m", PARAMS, avoid=avoid)
    assert isinstance(found, Assignment)
    return found


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("outcome", [NOT_JSON, NOT_A_MESSAGE], ids=["not_json", "not_a_message"])
async def test_unreadable_answers_open_the_members_breaker(outcome: Outcome) -> None:
    router = Router({"p": POOL}, Limiter())
    transitions = []
    for _ in range(FAILURES_TO_OPEN):
        # One request at a time goes to "a" while it fails (a gentle start after each failure).
        assignment = await take(router, avoid="b")
        assert assignment.endpoint == "a"
        transitions.append(router.finished("p", assignment, outcome, latency_s=0.1))

    assert transitions[:-1] == [None] * (FAILURES_TO_OPEN - 1)
    opened = transitions[-1]
    assert opened is not None
    assert (opened.endpoint, opened.status, opened.reason) == ("a", "open", UNREADABLE_REASON)
    assert (await take(router)).endpoint == "b"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_request_avoids_the_member_whose_answer_could_not_be_read() -> None:
    router = Router({"p": POOL}, Limiter())
    for _ in range(2):
        router.finished("p", await take(router, avoid="b"), OK, latency_s=0.1)
        router.finished("p", await take(router, avoid="a"), OK, latency_s=0.1)

    chosen = [(await take(router, avoid="a")).endpoint for _ in range(10)]

    assert chosen == ["b"] * 10


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_with_the_other_members_out_of_rotation_a_request_waits_for_one() -> None:
    router = Router({"p": POOL}, Limiter())
    failed = Retryable(reason="the connection failed", error=error_body("api_error", "down"))
    for _ in range(FAILURES_TO_OPEN):
        router.finished("p", await take(router, avoid="a"), failed, latency_s=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()

    assignment = await take(router, avoid="a")

    # "b" is out for its first opening; the request waited for its probe, not sent to "a".
    assert assignment.endpoint == "b" and assignment.probe
    assert loop.time() - started > 5


# -- whole runs --------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_member_answering_bodies_that_are_not_json_leaves_no_request_errored(
    store: Store,
) -> None:
    apps = {
        "good": create_app(SimulatorConfig(latency_s=0.5)),
        "garbage": create_app(SimulatorConfig(faults=FaultRates(malformed=1.0))),
    }
    batch_id = submit(
        store, [request_line(f"r{i}", f"q {i}") for i in range(100)], endpoint="claude"
    )

    await run_pool(store, batch_id, apps)

    assert store.batches.get(batch_id).counts.succeeded == 100
    assert answered_by(store, batch_id) == {"good": 100}
    assert apps["garbage"].stats.received <= FAILURES_TO_OPEN + 4
    health = store.health.of_endpoints(["garbage"])["garbage"]
    assert (health.state, health.reason) == ("open", UNREADABLE_REASON)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_when_every_member_answers_garbage_each_request_goes_to_two_members_then_ends(
    store: Store,
) -> None:
    apps = {
        name: create_app(SimulatorConfig(latency_s=0.1, faults=FaultRates(malformed=1.0)))
        for name in ("a", "b")
    }
    batch_id = submit(store, [request_line(f"r{i}", f"q {i}") for i in range(4)], endpoint="claude")

    await run_pool(store, batch_id, apps)

    assert store.batches.get(batch_id).counts.errored == 4
    # Each request was sent twice, once to each member: never twice to the same one.
    per_member = [Counter(entry.body_sha256 for entry in app.stats.log) for app in apps.values()]
    assert all(set(sends.values()) == {1} for sends in per_member)
    assert set(per_member[0]) == set(per_member[1]) and len(per_member[0]) == 4
    rows = list(store.results.iter_details(batch_id))
    assert all(row.attempts == 2 for row in rows)
    assert all(
        row.error_message and f"last failure: {UNREADABLE_FROM}" in row.error_message
        for row in rows
    )


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_with_the_other_members_refusing_the_key_the_single_endpoint_rule_applies(
    store: Store,
) -> None:
    apps = {
        "locked": create_app(SimulatorConfig(required_api_key="sk-right")),
        "garbage": create_app(SimulatorConfig(latency_s=0.5)),
    }
    lines = [request_line(f"r{i}", f"[[sim:not_message=1]] q {i}") for i in range(6)]
    batch_id = submit(store, lines, endpoint="claude")

    await run_pool(store, batch_id, apps)

    # No other member can take them: JSON that is no Message is final, as on one endpoint,
    # instead of being sent to the same member again.
    assert apps["locked"].stats.received == 1
    assert apps["garbage"].stats.received == 6
    rows = list(store.results.iter_details(batch_id))
    assert {(row.state, row.error_type, row.attempts) for row in rows} == {
        ("errored", INVALID_RESPONSE_ERROR_TYPE, 1)
    }
