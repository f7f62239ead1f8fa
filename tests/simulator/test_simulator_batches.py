"""The simulated Message Batches API: Anthropic's paths and AIMLAPI's, processing over loop
time, cancel, results, billing across the two lanes.

In-process tests drive the ASGI app through ``httpx.ASGITransport`` in virtual time
(``looptime``); the official SDK talks to the simulator on a socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message
from anthropic.types.messages import (
    DeletedMessageBatch,
    MessageBatch,
    MessageBatchIndividualResponse,
)

from batchrun.simulator import (
    ModelLimits,
    SimulatorApp,
    SimulatorConfig,
    SimulatorStats,
    create_app,
    running_simulator,
)
from batchrun.simulator.stats import request_fingerprint

MODEL = "claude-sim-1"
API_KEY = "sk-test-batches-key-0123"
WALL_START = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
BATCH_FIELDS = {
    "id",
    "type",
    "processing_status",
    "request_counts",
    "created_at",
    "expires_at",
    "ended_at",
    "cancel_initiated_at",
    "archived_at",
    "results_url",
}


def fixed_wall() -> datetime:
    return WALL_START


def config(**overrides: Any) -> SimulatorConfig:
    return SimulatorConfig(**{"seed": 11, "wall_clock": fixed_wall, **overrides})


@asynccontextmanager
async def simulator_client(app: SimulatorApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://simulator") as client:
        yield client


def params(text: str = "Hello, batch!", *, max_tokens: int = 100, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def requests_of(count: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i}", "params": params(f"question {i}")} for i in range(count)]


async def create(
    client: httpx.AsyncClient, requests: list[dict[str, Any]], path: str = "/v1/messages/batches"
) -> dict[str, Any]:
    response = await client.post(path, json={"requests": requests})
    assert response.status_code in (200, 201), response.text
    answer: dict[str, Any] = response.json()
    return answer


async def results(client: httpx.AsyncClient, batch_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/messages/batches/{batch_id}/results")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-jsonl"
    return [json.loads(line) for line in response.text.splitlines()]


# -- the MessageBatch object and processing time ------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_batch_is_in_progress_until_processing_time_has_passed_then_ended() -> None:
    loop = asyncio.get_running_loop()
    app = create_app(config(batch_processing_s=2.0))
    async with simulator_client(app) as client:
        created = await create(client, requests_of(4), "/gateway/eu/v1/messages/batches")
        batch_id = created["id"]
        assert set(created) == BATCH_FIELDS
        assert batch_id.startswith("msgbatch_") and len(batch_id) > len("msgbatch_")
        assert created["type"] == "message_batch"
        assert created["processing_status"] == "in_progress"
        assert created["created_at"] == "2026-03-04T05:06:07.890000Z"
        assert created["expires_at"] == "2026-03-05T05:06:07.890000Z"
        assert created["request_counts"] == {
            "processing": 4,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        assert created["ended_at"] is created["results_url"] is None
        assert created["cancel_initiated_at"] is created["archived_at"] is None

        await asyncio.sleep(1.9)
        running = (await client.get(f"/v1/messages/batches/{batch_id}")).json()
        assert running["processing_status"] == "in_progress"
        assert running["request_counts"]["processing"] == 4
        assert running["request_counts"]["succeeded"] == 0
        too_early = await client.get(f"/v1/messages/batches/{batch_id}/results")
        assert too_early.status_code == 400
        assert too_early.json()["error"]["type"] == "invalid_request_error"

        await asyncio.sleep(0.1)
        assert loop.time() == pytest.approx(2.0)
        ended = (await client.get(f"/gateway/eu/v1/messages/batches/{batch_id}")).json()
    batch = MessageBatch.model_validate(ended)
    assert batch.processing_status == "ended"
    assert batch.request_counts.model_dump() == {
        "processing": 0,
        "succeeded": 4,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch.ended_at == WALL_START + timedelta(seconds=2)
    assert batch.results_url == (
        f"http://simulator/gateway/eu/v1/messages/batches/{batch_id}/results"
    )
    assert app.stats.batch_retrieves == {batch_id: 2}


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_results_are_complete_and_in_a_shuffled_order_seeded_per_batch() -> None:
    async def one_run() -> list[str]:
        app = create_app(config())
        async with simulator_client(app) as client:
            batch = await create(client, requests_of(30))
            await asyncio.sleep(2.0)
            # The SDK sends this Accept header for results.
            response = await client.get(
                f"/v1/messages/batches/{batch['id']}/results",
                headers={"accept": "application/binary"},
            )
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.text.splitlines()]
        for line in lines:
            parsed = MessageBatchIndividualResponse.model_validate(line)
            assert parsed.result.type == "succeeded"
        return [line["custom_id"] for line in lines]

    order = await one_run()
    submitted = [f"r{i}" for i in range(30)]
    assert sorted(order) == sorted(submitted) and len(order) == 30
    assert order != submitted
    assert await one_run() == order


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_batch_result_is_what_the_messages_route_answers_for_the_same_params() -> None:
    weather = {"name": "get_weather", "input_schema": {"type": "object"}}
    cases = {
        "plain": params("What is the capital of France?"),
        "capped": params("Tell me everything", max_tokens=7),
        "system": params("Hi", system=[{"type": "text", "text": "You are terse."}]),
        "tool": params("Weather?", tools=[weather], tool_choice={"type": "any"}),
        "longer": params("[[sim:output_tokens=90]] Write more"),
    }
    app = create_app(config())
    async with simulator_client(app) as client:
        realtime = {}
        for name, body in cases.items():
            response = await client.post("/v1/messages", json=body)
            realtime[name] = Message.model_validate(response.json())
        batch = await create(client, [{"custom_id": k, "params": v} for k, v in cases.items()])
        await asyncio.sleep(2.0)
        lines = await results(client, batch["id"])
    for line in lines:
        result = MessageBatchIndividualResponse.model_validate(line).result
        assert result.type == "succeeded"
        batched, answered = result.message, realtime[line["custom_id"]]
        # Ids (of the message, of a tool_use block) are new for every answer.
        assert [block.model_dump(exclude={"id"}) for block in batched.content] == [
            block.model_dump(exclude={"id"}) for block in answered.content
        ]
        assert batched.stop_reason == answered.stop_reason
        assert batched.model == answered.model
        assert batched.usage.service_tier == "batch"
        assert answered.usage.service_tier == "standard"
        assert batched.usage.model_copy(update={"service_tier": "standard"}) == answered.usage
        assert batched.id != answered.id


# -- errored, expired, canceled ---------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_directive_statuses_make_errored_results_with_that_status_error_type() -> None:
    app = create_app(config())
    cases = {
        "overloaded": ("[[sim:status=529]]", "overloaded_error"),
        "server": ("[[sim:status=500]]", "api_error"),
        "limited": ("[[sim:status=429]]", "rate_limit_error"),
        "forbidden": ("[[sim:status=403]]", "permission_error"),
    }
    once = params("[[sim:status=500:times=1]] flaky")
    async with simulator_client(app) as client:
        requests = [{"custom_id": k, "params": params(v[0])} for k, v in cases.items()]
        batch = await create(client, [*requests, {"custom_id": "once", "params": once}])
        await asyncio.sleep(2.0)
        lines = {line["custom_id"]: line["result"] for line in await results(client, batch["id"])}
        again = await create(client, [{"custom_id": "once", "params": once}])
        await asyncio.sleep(2.0)
        retried = (await results(client, again["id"]))[0]["result"]
    for name, (_, error_type) in cases.items():
        result = lines[name]
        assert result["type"] == "errored"
        assert result["error"]["type"] == "error"
        assert result["error"]["error"]["type"] == error_type
        assert result["error"]["request_id"].startswith("req_")
        MessageBatchIndividualResponse.model_validate({"custom_id": name, "result": result})
    assert lines["once"]["type"] == "errored"
    assert retried["type"] == "succeeded"
    assert app.stats.billed_total == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_invalid_params_are_accepted_then_end_as_errored_results() -> None:
    bad = {
        "no_max_tokens": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
        "streamed": params(stream=True),
        "bad_directive": params("[[sim:sttaus=500]]"),
        "bad_cache_control": params(
            system=[{"type": "text", "text": "S", "cache_control": {"type": "forever"}}]
        ),
    }
    app = create_app(config())
    async with simulator_client(app) as client:
        requests = [{"custom_id": k, "params": v} for k, v in bad.items()]
        batch = await create(client, [*requests, {"custom_id": "good", "params": params()}])
        await asyncio.sleep(2.0)
        ended = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
        lines = {line["custom_id"]: line["result"] for line in await results(client, batch["id"])}
    assert ended["request_counts"]["errored"] == 4
    assert ended["request_counts"]["succeeded"] == 1
    messages = {}
    for name in bad:
        assert lines[name]["type"] == "errored"
        assert lines[name]["error"]["error"]["type"] == "invalid_request_error"
        messages[name] = lines[name]["error"]["error"]["message"]
    assert messages["no_max_tokens"] == "max_tokens: Field required"
    assert "stream" in messages["streamed"]
    assert "sttaus" in messages["bad_directive"]
    assert messages["bad_cache_control"].startswith("system.0.cache_control.type")


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_share_of_requests_expires_the_same_way_with_the_same_seed() -> None:
    async def expired_ids() -> set[str]:
        app = create_app(config(batch_expired_rate=0.25))
        async with simulator_client(app) as client:
            batch = await create(client, requests_of(200))
            await asyncio.sleep(2.0)
            counts = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
            lines = await results(client, batch["id"])
        expired = {line["custom_id"] for line in lines if line["result"] == {"type": "expired"}}
        assert counts["request_counts"]["expired"] == len(expired)
        assert counts["request_counts"]["succeeded"] == 200 - len(expired)
        assert app.stats.billed_total == 200 - len(expired)
        return expired

    expired = await expired_ids()
    assert 25 <= len(expired) <= 75
    assert await expired_ids() == expired


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancel_keeps_the_results_done_by_then_and_cancels_the_rest() -> None:
    app = create_app(config(batch_processing_s=2.0, batch_cancel_s=0.5))
    async with simulator_client(app) as client:
        batch = await create(client, requests_of(40))
        await asyncio.sleep(1.0)
        canceling = (await client.post(f"/v1/messages/batches/{batch['id']}/cancel")).json()
        assert canceling["processing_status"] == "canceling"
        await asyncio.sleep(0.2)
        twice = (await client.post(f"/v1/messages/batches/{batch['id']}/cancel")).json()
        assert twice == canceling
        assert canceling["cancel_initiated_at"] == "2026-03-04T05:06:07.890000Z"
        assert canceling["request_counts"]["processing"] == 40
        await asyncio.sleep(0.2)
        still = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
        assert still["processing_status"] == "canceling"
        await asyncio.sleep(0.1)
        ended = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
        lines = await results(client, batch["id"])
        again = await client.post(f"/v1/messages/batches/{batch['id']}/cancel")
    # Done by 1.5 s of 2 s: three quarters of the requests.
    assert ended["processing_status"] == "ended"
    assert ended["request_counts"]["succeeded"] == 30
    assert ended["request_counts"]["canceled"] == 10
    assert ended["ended_at"] == "2026-03-04T05:06:09.390000Z"
    kinds = [line["result"]["type"] for line in lines]
    assert kinds.count("canceled") == 10 and kinds.count("succeeded") == 30
    # Cancelling an ended batch changes nothing (the reference says nothing about it).
    assert again.status_code == 200
    assert again.json() == ended
    assert app.stats.batch_cancels == 3
    assert app.stats.billed_total == 30


# -- listing, deleting, errors ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_list_is_newest_first_and_pages_with_after_and_before_ids() -> None:
    app = create_app(config())
    async with simulator_client(app) as client:
        ids = [(await create(client, requests_of(1)))["id"] for _ in range(5)]
        newest = list(reversed(ids))
        default = (await client.get("/v1/messages/batches")).json()
        first = (await client.get("/v1/messages/batches", params={"limit": 2})).json()
        second = (
            await client.get(
                "/v1/messages/batches", params={"limit": 2, "after_id": first["last_id"]}
            )
        ).json()
        last = (
            await client.get(
                "/v1/messages/batches", params={"limit": 2, "after_id": second["last_id"]}
            )
        ).json()
        back = (
            await client.get(
                "/v1/messages/batches", params={"limit": 2, "before_id": second["first_id"]}
            )
        ).json()
        bad = [
            await client.get("/v1/messages/batches", params={"limit": value})
            for value in ("0", "1001", "x")
        ]
        unknown = await client.get("/v1/messages/batches", params={"after_id": "msgbatch_x"})
    assert [batch["id"] for batch in default["data"]] == newest
    assert default["has_more"] is False
    assert (first["first_id"], first["last_id"], first["has_more"]) == (newest[0], newest[1], True)
    assert [batch["id"] for batch in second["data"]] == newest[2:4]
    assert second["has_more"] is True
    assert [batch["id"] for batch in last["data"]] == newest[4:]
    assert last["has_more"] is False
    assert [batch["id"] for batch in back["data"]] == newest[:2]
    assert back["has_more"] is False
    for response in bad:
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.json()["error"]["message"].startswith("limit: ")
    for batch in default["data"]:
        MessageBatch.model_validate(batch)
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"].startswith("after_id: ")


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_delete_works_only_once_ended_then_the_batch_is_gone() -> None:
    app = create_app(config())
    async with simulator_client(app) as client:
        batch_id = (await create(client, requests_of(2)))["id"]
        early = await client.delete(f"/v1/messages/batches/{batch_id}")
        await asyncio.sleep(2.0)
        deleted = await client.delete(f"/v1/messages/batches/{batch_id}")
        after = [
            await client.get(f"/v1/messages/batches/{batch_id}"),
            await client.get(f"/v1/messages/batches/{batch_id}/results"),
            await client.post(f"/v1/messages/batches/{batch_id}/cancel"),
            await client.delete(f"/v1/messages/batches/{batch_id}"),
        ]
        listed = (await client.get("/v1/messages/batches")).json()
    assert early.status_code == 400
    assert early.json()["error"]["type"] == "invalid_request_error"
    assert deleted.status_code == 200
    assert DeletedMessageBatch.model_validate(deleted.json()).id == batch_id
    assert deleted.json() == {"id": batch_id, "type": "message_batch_deleted"}
    for response in after:
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"
    assert listed["data"] == []


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        ([], "requests: List should have at least 1 item"),
        ([{"custom_id": "a b", "params": {}}], "requests.0.custom_id: String should match"),
        (
            [{"custom_id": "x" * 65, "params": {}}],
            "requests.0.custom_id: String should have at most 64 characters",
        ),
        ([{"custom_id": "", "params": {}}], "requests.0.custom_id: String should have at least"),
        ([{"params": {}}], "requests.0.custom_id: Field required"),
        (
            [{"custom_id": "a", "params": {}}, {"custom_id": "a", "params": {}}],
            "requests.1.custom_id: duplicate custom_id 'a'",
        ),
        ([{"custom_id": "a"}], "requests.0.params: Field required"),
        ([{"custom_id": "a", "params": []}], "requests.0.params: Input should be a valid dict"),
        ([{"custom_id": f"r{i}", "params": {}} for i in range(4)], "at most 3 items"),
    ],
)
@pytest.mark.asyncio
async def test_a_bad_envelope_is_a_400_naming_the_field(
    requests: list[dict[str, Any]], message: str
) -> None:
    app = create_app(config(batch_max_requests=3))
    async with simulator_client(app) as client:
        response = await client.post("/v1/messages/batches", json={"requests": requests})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert message in response.json()["error"]["message"]
    assert app.stats.batches_created == 0


@pytest.mark.asyncio
async def test_a_body_over_the_size_limit_is_a_413_request_too_large() -> None:
    app = create_app(config(batch_max_bytes=2000, required_api_key=API_KEY))
    async with simulator_client(app) as client:
        big = await client.post("/v1/messages/batches", json={"requests": requests_of(40)})
        small = await client.post(
            "/v1/messages/batches",
            json={"requests": requests_of(2)},
            headers={"x-api-key": API_KEY},
        )
    # A proxy refuses the size before the API looks at the key.
    assert big.status_code == 413
    assert big.json()["error"]["type"] == "request_too_large"
    assert small.status_code == 200


@pytest.mark.asyncio
async def test_every_batch_route_needs_the_api_key() -> None:
    app = create_app(config(required_api_key=API_KEY))
    good = {"x-api-key": API_KEY}
    async with simulator_client(app) as client:
        batch_id = (
            await client.post(
                "/v1/messages/batches", json={"requests": requests_of(1)}, headers=good
            )
        ).json()["id"]
        calls = [
            client.post("/v1/messages/batches", json={"requests": requests_of(1)}),
            client.get("/v1/messages/batches"),
            client.get(f"/v1/messages/batches/{batch_id}"),
            client.post(f"/v1/messages/batches/{batch_id}/cancel"),
            client.get(f"/v1/messages/batches/{batch_id}/results"),
            client.delete(f"/v1/messages/batches/{batch_id}"),
            client.post("/v1/batches", json={"requests": requests_of(1)}),
            client.get("/v1/batches", params={"batch_id": batch_id}),
            client.post(f"/v1/batches/cancel/{batch_id}", headers={"x-api-key": "wrong"}),
        ]
        answers = [await call for call in calls]
        bearer = await client.get(
            f"/v1/batches?batch_id={batch_id}", headers={"authorization": f"Bearer {API_KEY}"}
        )
    for response in answers:
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert bearer.status_code == 200
    assert app.stats.batches_created == 1


@pytest.mark.asyncio
async def test_unknown_ids_are_404_and_wrong_methods_405() -> None:
    app = create_app(config())
    async with simulator_client(app) as client:
        missing = [
            await client.get("/v1/messages/batches/msgbatch_nope"),
            await client.get("/v1/messages/batches/msgbatch_nope/results"),
            await client.post("/v1/messages/batches/msgbatch_nope/cancel"),
            await client.get("/v1/batches", params={"batch_id": "msgbatch_nope"}),
            await client.post("/v1/batches/cancel/msgbatch_nope"),
        ]
        wrong = [
            await client.put("/v1/messages/batches", json={}),
            await client.post("/v1/messages/batches/msgbatch_nope", json={}),
            await client.get("/v1/messages/batches/msgbatch_nope/cancel"),
            await client.post("/v1/messages/batches/msgbatch_nope/results"),
            await client.delete("/v1/batches"),
            await client.get("/v1/batches/cancel/msgbatch_nope"),
        ]
        no_id = await client.get("/v1/batches")
    for response in missing:
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"
    for response in wrong:
        assert response.status_code == 405
    assert no_id.status_code == 400
    assert no_id.json()["error"]["message"] == "batch_id: Field required"


# -- AIMLAPI's paths ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_aimlapi_paths_create_with_201_answer_status_then_results_and_cancel() -> None:
    app = create_app(config())
    async with simulator_client(app) as client:
        created = await client.post("/v1/batches", json={"requests": requests_of(3)})
        batch_id = created.json()["id"]
        status = await client.get("/v1/batches", params={"batch_id": batch_id})
        await asyncio.sleep(2.0)
        done = await client.get("/v1/batches", params={"batch_id": batch_id})
        other = (await client.post("/v1/batches", json={"requests": requests_of(3)})).json()
        canceled = await client.post(f"/v1/batches/cancel/{other['id']}")
        await asyncio.sleep(0.5)
        both = await client.get(f"/v1/messages/batches/{other['id']}")
    assert created.status_code == 201
    assert MessageBatch.model_validate(created.json()).processing_status == "in_progress"
    assert status.status_code == 200
    assert status.headers["content-type"] == "application/json"
    assert status.json()["id"] == batch_id and status.json()["results_url"] is None
    assert done.status_code == 200
    assert done.headers["content-type"] == "application/x-jsonl"
    lines = [json.loads(line) for line in done.text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["r0", "r1", "r2"]
    assert canceled.status_code == 200
    assert canceled.json()["processing_status"] == "canceling"
    assert both.json()["processing_status"] == "ended"
    assert app.stats.batch_retrieves == {batch_id: 2, other["id"]: 1}
    assert app.stats.batch_cancels == 1
    logged = [(entry.path, entry.status) for entry in app.stats.log]
    assert logged[:3] == [("/v1/batches", "201"), ("/v1/batches", "200"), ("/v1/batches", "200")]
    assert (f"/v1/batches/cancel/{other['id']}", "200") in logged


# -- rate limits and billing ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_batches_do_not_use_the_messages_rate_limits() -> None:
    app = create_app(config(limits={"*": ModelLimits(rpm=1, itpm=100)}))
    async with simulator_client(app) as client:
        batch = await create(client, requests_of(20))
        await asyncio.sleep(2.0)
        ended = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
        realtime = await client.post("/v1/messages", json=params())
    assert ended["request_counts"]["succeeded"] == 20
    assert realtime.status_code == 200
    assert realtime.headers["anthropic-ratelimit-requests-remaining"] == "0"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_billing_counts_each_fingerprint_across_the_realtime_and_batch_lanes() -> None:
    app = create_app(config())
    twice = params("billed twice in real time, once in a batch")
    async with simulator_client(app) as client:
        await client.post("/v1/messages", json=twice)
        streamed = await client.post("/v1/messages", json={**twice, "stream": True})
        assert streamed.status_code == 200
        await client.post("/v1/messages", json=params("[[sim:status=500]] not billed"))
        batch = await create(
            client,
            [
                {"custom_id": "twice", "params": twice},
                {"custom_id": "once", "params": params("once, in a batch")},
                {"custom_id": "failed", "params": params("[[sim:status=529]]")},
            ],
        )
        assert app.stats.billed_total == 2  # batch results are billed when the batch ends
        await asyncio.sleep(2.0)
        exported = (await client.get("/_simulator/stats")).json()
        stats = app.stats
        assert stats.billed_total == 4
        assert stats.billed_fingerprints == 2
        assert stats.paid_twice == 1
        assert sorted(stats.billed_by_fingerprint.values()) == [1, 3]
        assert list(exported["billed_more_than_once"].values()) == [3]
        assert exported["paid_twice"] == 1 and exported["billed_total"] == 4
        assert exported["batches_created"] == 1
        assert exported["batch_requests_received"] == 3
        copy = SimulatorStats.from_dict(exported)
        assert copy.to_dict() == stats.to_dict()
        assert copy.billed_by_fingerprint == exported["billed_more_than_once"]
        await client.post("/_simulator/reset")
        gone = await client.get(f"/v1/messages/batches/{batch['id']}")
    assert gone.status_code == 404
    assert app.stats.billed_total == app.stats.paid_twice == app.stats.batches_created == 0
    assert app.stats.billed_by_fingerprint == {}


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_batch_ends_and_is_billed_on_time_even_if_nobody_asks() -> None:
    app = create_app(config(batch_concurrency=3))
    async with simulator_client(app) as client:
        await create(client, requests_of(10))
    await asyncio.sleep(1.99)
    assert app.stats.billed_total == 0
    await asyncio.sleep(0.01)
    assert app.stats.billed_total == 10


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_batch_waits_its_start_time_then_processes_and_ends_after_it() -> None:
    app = create_app(config(batch_start_s=5.0, batch_processing_s=2.0))
    async with simulator_client(app) as client:
        batch = await create(client, requests_of(4))
        await asyncio.sleep(4.9)
        waiting = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
        await asyncio.sleep(2.0)
        running = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
        await asyncio.sleep(0.2)
        ended = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
    assert waiting["processing_status"] == running["processing_status"] == "in_progress"
    assert app.stats.billed_total == 4
    assert ended["processing_status"] == "ended"
    assert ended["request_counts"]["succeeded"] == 4


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_batch_canceled_before_it_starts_ends_with_every_request_canceled() -> None:
    app = create_app(config(batch_start_s=60.0, batch_cancel_s=0.5))
    async with simulator_client(app) as client:
        batch = await create(client, requests_of(3))
        await asyncio.sleep(10.0)
        await client.post(f"/v1/messages/batches/{batch['id']}/cancel")
        await asyncio.sleep(0.5)
        ended = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
        lines = await results(client, batch["id"])
    assert ended["processing_status"] == "ended"
    assert ended["request_counts"]["canceled"] == 3
    assert {line["result"]["type"] for line in lines} == {"canceled"}
    assert app.stats.billed_total == 0


def test_the_fingerprint_is_the_sha256_of_the_params_without_stream() -> None:
    body = params("ünïcode", system="S")
    expected = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert request_fingerprint(body) == expected
    assert request_fingerprint({**body, "stream": True}) == expected


# -- the official SDK on a socket ---------------------------------------------------------------


def test_the_anthropic_sdk_parses_every_batch_answer_on_a_socket() -> None:
    app = create_app(
        SimulatorConfig(required_api_key=API_KEY, batch_processing_s=0.3, batch_cancel_s=0.05)
    )
    slow = create_app(
        SimulatorConfig(required_api_key=API_KEY, batch_processing_s=30.0, batch_cancel_s=0.3)
    )
    requests: Any = [
        {"custom_id": "a", "params": params("first")},
        {"custom_id": "b", "params": params("[[sim:status=529]]")},
    ]
    with running_simulator(app=app) as base_url, running_simulator(app=slow) as slow_url:
        sdk = anthropic.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0)
        slow_sdk = anthropic.Anthropic(base_url=slow_url, api_key=API_KEY, max_retries=0)
        with sdk, slow_sdk:
            created = sdk.messages.batches.create(requests=requests)
            assert created.processing_status == "in_progress"
            assert created.created_at.tzinfo is not None
            batch = _wait_until_ended(sdk, created.id)
            assert batch.request_counts.succeeded == 1 and batch.request_counts.errored == 1
            assert batch.results_url == f"{base_url}/v1/messages/batches/{created.id}/results"
            lines = {
                line.custom_id: line.result for line in sdk.messages.batches.results(created.id)
            }
            page = sdk.messages.batches.list(limit=10)
            to_cancel = slow_sdk.messages.batches.create(requests=requests)
            canceling = slow_sdk.messages.batches.cancel(to_cancel.id)
            canceled = _wait_until_ended(slow_sdk, to_cancel.id)
            canceled_lines = list(slow_sdk.messages.batches.results(to_cancel.id))
            deleted = sdk.messages.batches.delete(created.id)
            with pytest.raises(anthropic.NotFoundError):
                sdk.messages.batches.retrieve(created.id)
    assert lines["a"].type == "succeeded"
    assert lines["a"].message.content[0].type == "text"
    assert lines["b"].type == "errored"
    assert lines["b"].error.error.type == "overloaded_error"
    assert [item.id for item in page.data] == [created.id]
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert canceled.request_counts.canceled == 2
    assert {line.result.type for line in canceled_lines} == {"canceled"}
    assert deleted.type == "message_batch_deleted" and deleted.id == created.id


def _wait_until_ended(sdk: anthropic.Anthropic, batch_id: str) -> MessageBatch:
    deadline = time.monotonic() + 10.0
    while True:
        batch = sdk.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended" or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


# -- the command ------------------------------------------------------------------------------


def test_from_options_takes_the_batch_and_cache_settings() -> None:
    config = SimulatorConfig.from_options(
        batch_processing_s=5.0,
        batch_expired_rate=0.1,
        batch_cancel_s=1.5,
        batch_concurrency=7,
        cache_min_tokens=10,
    )
    assert (config.batch_processing_s, config.batch_expired_rate) == (5.0, 0.1)
    assert (config.batch_cancel_s, config.batch_concurrency) == (1.5, 7)
    assert config.cache_min_tokens == 10
    defaults = SimulatorConfig()
    assert (defaults.batch_processing_s, defaults.batch_cancel_s) == (2.0, 0.5)
    assert (defaults.batch_concurrency, defaults.batch_expired_rate) == (50, 0.0)
    assert (defaults.batch_max_requests, defaults.batch_max_bytes) == (100_000, 256_000_000)
    assert defaults.cache_min_tokens == 1024
    for bad in ({"batch_expired_rate": 1.5}, {"batch_concurrency": 0}, {"batch_cancel_s": -1}):
        with pytest.raises(ValueError, match="batch"):
            SimulatorConfig(**bad)


def test_the_simulate_command_passes_its_batch_flags_to_the_server() -> None:
    command = [
        str(Path(sys.executable).parent / "batchrun"),
        "simulate",
        "--port",
        "0",
        "--batch-processing-s",
        "0.2",
        "--batch-expired-rate",
        "1",
        "--batch-cancel-s",
        "0.1",
        "--batch-concurrency",
        "3",
        "--cache-min-tokens",
        "0",
        "--batch-start-s",
        "0.1",
        "--cache-ttl-scale",
        "0.01",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as server:
        try:
            assert server.stdout is not None
            base_url = server.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            with httpx.Client(base_url=base_url) as client:
                created = client.post("/v1/messages/batches", json={"requests": requests_of(3)})
                batch_id = created.json()["id"]
                deadline = time.monotonic() + 10.0
                while time.monotonic() < deadline:
                    batch = client.get(f"/v1/messages/batches/{batch_id}").json()
                    if batch["processing_status"] == "ended":
                        break
                    time.sleep(0.05)
        finally:
            server.terminate()
    assert batch["request_counts"]["expired"] == 3
