"""`batchrun serve` driven by the official `anthropic` SDK, unchanged, with `base_url` set to
the server: every operation of `messages.batches`, its pages and its errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse

from batchrun.simulator import SimulatorConfig, running_simulator
from tests.conftest import request_line
from tests.server.serving import KEY_A, KEY_B, running_server, server_env

POLL_TIMEOUT_S = 120.0


_OPEN: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    """SDK clients hold connections; closed after each test (an unclosed socket warns)."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def sdk(url: str, key: str = KEY_A) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    _OPEN.append(client)
    return client


def requests(count: int, prefix: str = "r") -> list[dict[str, object]]:
    return [request_line(f"{prefix}{i:05d}", f"question {i}") for i in range(count)]


def wait_until_ended(
    client: anthropic.Anthropic, batch_id: str
) -> anthropic.types.messages.MessageBatch:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[str]:
    with running_server(db_url, server_env(tmp_path)) as (url, _server):
        yield url


def test_create_poll_results_delete_round_trip_of_1000_requests(served: str) -> None:
    client = sdk(served)
    created = client.messages.batches.create(requests=requests(1000))  # type: ignore[arg-type]
    assert created.processing_status == "in_progress"
    assert created.request_counts.processing + created.request_counts.succeeded == 1000

    ended = wait_until_ended(client, created.id)
    assert ended.id == created.id
    assert ended.request_counts.succeeded == 1000
    assert ended.results_url == f"{served}/v1/messages/batches/{created.id}/results"

    results = list(client.messages.batches.results(created.id))
    assert all(isinstance(item, MessageBatchIndividualResponse) for item in results)
    assert sorted(item.custom_id for item in results) == [f"r{i:05d}" for i in range(1000)]
    for item in results:
        assert item.result.type == "succeeded"
        number = int(item.custom_id[1:])
        text = item.result.message.content[0].text  # type: ignore[union-attr]
        assert f"question {number}" in text

    deleted = client.messages.batches.delete(created.id)
    assert (deleted.id, deleted.type) == (created.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(created.id)


def test_list_pages_every_batch_once_newest_first_and_only_the_keys_own(
    db_url: str, tmp_path: Path
) -> None:
    with running_server(db_url, server_env(tmp_path), workers=0) as (url, _server):
        client = sdk(url)
        made = [
            client.messages.batches.create(requests=requests(1, f"b{n}_")).id  # type: ignore[arg-type]
            for n in range(25)
        ]
        sdk(url, KEY_B).messages.batches.create(requests=requests(1))  # type: ignore[arg-type]

        listed = [batch.id for batch in client.messages.batches.list(limit=10)]
        assert listed == list(reversed(made))

        first = client.messages.batches.list(limit=10)
        assert (first.first_id, first.last_id, first.has_more) == (made[24], made[15], True)
        newer = client.messages.batches.list(limit=10, before_id=made[5])
        assert [b.id for b in newer.data] == list(reversed(made[6:16]))
        assert newer.has_more is True
        last = client.messages.batches.list(limit=10, after_id=made[5])
        assert [b.id for b in last.data] == list(reversed(made[0:5]))
        assert last.has_more is False
        assert len(list(sdk(url, KEY_B).messages.batches.list())) == 1


def test_cancel_mid_run_ends_with_partial_results_and_canceled_counted(
    db_url: str, tmp_path: Path
) -> None:
    with running_simulator(SimulatorConfig(latency_s=0.3)) as sim_url:
        config = tmp_path / "batchrun.toml"
        config.write_text(
            f'[endpoints.slow]\nbase_url = "{sim_url}"\nauth = "none"\n'
            '[endpoints.slow.limits."*"]\nrpm = 240\n'
        )
        env = server_env(tmp_path)
        with running_server(db_url, env, endpoint="slow", config=config) as (url, _server):
            client = sdk(url)
            batch = client.messages.batches.create(requests=requests(200))  # type: ignore[arg-type]
            deadline = time.monotonic() + 60
            while client.messages.batches.retrieve(batch.id).request_counts.succeeded < 3:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            canceling = client.messages.batches.cancel(batch.id)
            assert canceling.processing_status in ("canceling", "ended")
            assert canceling.cancel_initiated_at is not None
            ended = wait_until_ended(client, batch.id)
            results = list(client.messages.batches.results(batch.id))

    counts = ended.request_counts
    assert counts.canceled > 0 and counts.succeeded >= 3
    assert counts.succeeded + counts.canceled + counts.errored + counts.expired == 200
    kinds = [item.result.type for item in results]
    assert len(results) == 200
    assert kinds.count("succeeded") == counts.succeeded
    assert kinds.count("canceled") == counts.canceled


def test_errors_come_back_as_the_sdks_exceptions(served: str) -> None:
    owner = sdk(served)
    batch = owner.messages.batches.create(requests=requests(2))  # type: ignore[arg-type]

    with pytest.raises(anthropic.AuthenticationError) as wrong:
        sdk(served, "not-a-key-of-this-server").messages.batches.list()
    assert "not-a-key-of-this-server" not in str(wrong.value)

    stranger = sdk(served, KEY_B)
    for call in (
        lambda: stranger.messages.batches.retrieve(batch.id),
        lambda: stranger.messages.batches.cancel(batch.id),
        lambda: stranger.messages.batches.delete(batch.id),
        lambda: list(stranger.messages.batches.results(batch.id)),
    ):
        with pytest.raises(anthropic.NotFoundError):
            call()
    assert [b.id for b in stranger.messages.batches.list()] == []

    bad = requests(5)
    bad[1]["custom_id"] = "has space"
    del bad[3]["params"]["max_tokens"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as invalid:
        owner.messages.batches.create(requests=bad)  # type: ignore[arg-type]
    message = str(invalid.value)
    assert "requests[1]" in message and "custom_id" in message
    assert "requests[3]" in message and "max_tokens" in message
    assert "requests[0]" not in message
    assert [b.id for b in owner.messages.batches.list()] == [batch.id]


def test_results_wait_for_the_end_unless_partial_is_asked(db_url: str, tmp_path: Path) -> None:
    with running_server(db_url, server_env(tmp_path), workers=0) as (url, _server):
        batch = sdk(url).messages.batches.create(requests=requests(3))  # type: ignore[arg-type]
        with httpx.Client(base_url=url, headers={"x-api-key": KEY_A}) as http:
            early = http.get(f"/v1/messages/batches/{batch.id}/results")
            assert early.status_code == 400
            assert early.json()["error"]["type"] == "invalid_request_error"
            assert "partial=true" in early.json()["error"]["message"]
            partial = http.get(f"/v1/messages/batches/{batch.id}/results?partial=true")
            assert partial.status_code == 200 and partial.text == ""
            refused = http.delete(f"/v1/messages/batches/{batch.id}")
            assert refused.status_code == 400
            assert "cancel" in refused.json()["error"]["message"]


def test_the_batchrun_endpoint_header_picks_a_known_endpoint(served: str) -> None:
    client = sdk(served)
    with pytest.raises(anthropic.BadRequestError) as unknown:
        client.messages.batches.create(
            requests=requests(1),  # type: ignore[arg-type]
            extra_headers={"batchrun-endpoint": "nowhere"},
        )
    assert "batchrun-endpoint" in str(unknown.value) and "nowhere" in str(unknown.value)
    # The workers in this server could not send it: refused now, not stuck later.
    with pytest.raises(anthropic.BadRequestError) as keyless:
        client.messages.batches.create(
            requests=requests(1),  # type: ignore[arg-type]
            extra_headers={"batchrun-endpoint": "anthropic"},
        )
    assert "ANTHROPIC_API_KEY" in str(keyless.value)
    chosen = client.messages.batches.create(
        requests=requests(1),  # type: ignore[arg-type]
        extra_headers={"batchrun-endpoint": "simulator"},
    )
    assert chosen.model_extra is not None and chosen.model_extra["endpoint"] == "simulator"


def test_a_batch_belongs_to_the_keys_id_and_no_key_reaches_the_database_or_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from batchrun.server.keys import key_id

    path = tmp_path / "batchrun.db"
    with running_server(f"sqlite:///{path}", server_env(tmp_path)) as (url, server):
        client = sdk(url)
        batch = client.messages.batches.create(requests=requests(3))  # type: ignore[arg-type]
        wait_until_ended(client, batch.id)
        with pytest.raises(anthropic.AuthenticationError):
            sdk(url, KEY_B[:-1] + "X").messages.batches.retrieve(batch.id)
        assert server.store.batches.get(batch.id).owner == key_id(KEY_A)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("batchrun.db*"))
    for key in (KEY_A, KEY_B, KEY_B[:-1] + "X"):
        assert key.encode() not in stored
        assert key not in caplog.text


def test_an_api_only_server_never_sends_and_a_separate_run_does(
    db_url: str, tmp_path: Path
) -> None:
    import batchrun

    env = server_env(tmp_path)
    with running_server(db_url, env, workers=0) as (url, _server):
        client = sdk(url)
        batch = client.messages.batches.create(requests=requests(20))  # type: ignore[arg-type]
        assert client.messages.batches.retrieve(batch.id).request_counts.processing == 20
        with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as worker:
            ran = worker.run(stop_on_signals=False)
        assert wait_until_ended(client, batch.id).request_counts.succeeded == 20
    # The separate run answered all 20 (a worker in the server would have claimed some of
    # them meanwhile): proven by who answered, not by a wait in which nothing happened.
    assert ran.last is not None
    assert ran.last.report.succeeded == 20
