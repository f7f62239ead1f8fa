"""A run's webhook notifications (RunSession with a notifier): which events are told, with
what, when, and each only once. The in-process simulator, a real database, an in-process
webhook (httpx's MockTransport behind the real notifier) and virtual time (looptime); the
receiver that is down is a real closed port, in real time."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from batchrun import __version__
from batchrun.config.prices import CostTotal, PriceTable
from batchrun.errors import ExitCode
from batchrun.input.ingest import submit_requests
from batchrun.ops.notices import NOTIFY_EXIT_WAIT_S, NOTIFY_POLL_S, Notice, event_of, notice_of
from batchrun.ops.session import RunOptions, RunResult, RunSession
from batchrun.records import BatchSummary, RequestCounts
from batchrun.store.store import Store
from batchrun.transport.endpoints import resolve_endpoints
from batchrun.transport.notify import NOTIFY_RETRY_WINDOW_S, WebhookNotifier
from tests.conftest import jsonl, request_line, submit
from tests.webhooks import SECRET_PATH, closed_port_url

pytestmark = pytest.mark.asyncio

HAIKU = "claude-3-haiku-20240307"
HOOK_URL = f"https://hooks.example.com{SECRET_PATH}"


class Inbox:
    """An in-process webhook: the documents it got and the loop time each came at; it may
    answer nothing at all (``hang``)."""

    def __init__(self, *, hang: bool = False) -> None:
        self.documents: list[dict[str, Any]] = []
        self.times: list[float] = []
        self._hang = hang

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self._hang:
            await asyncio.sleep(3600)
        self.times.append(asyncio.get_running_loop().time())
        self.documents.append(json.loads(request.content))
        return httpx.Response(200)

    def notifier(self) -> WebhookNotifier:
        return WebhookNotifier(HOOK_URL, transport=httpx.MockTransport(self.handle))

    def events(self) -> list[tuple[str, str]]:
        return [(doc["event"], doc["batch"]["id"]) for doc in self.documents]


def session(store: Store, notifier: WebhookNotifier, **options: Any) -> RunSession:
    """A run on the built-in endpoints (the in-process simulator) that tells ``notifier``."""
    return RunSession(
        store,
        known=resolve_endpoints({}, {}),
        prices=PriceTable(),
        env={},
        options=RunOptions(stop_on_signals=False, **options),
        notifier=notifier,
    )


def submit_with(store: Store, lines: list[dict[str, object]], **options: Any) -> str:
    return submit_requests(
        store,
        io.BytesIO(jsonl(lines)),
        source="test.jsonl",
        endpoint="simulator",
        now=datetime.now(UTC),
        **options,
    )


@pytest.mark.looptime
async def test_a_batch_that_ends_is_told_once_with_its_counts_and_cost(store: Store) -> None:
    inbox = Inbox()
    batch_id = submit_with(store, [request_line(f"r{i}", model=HAIKU) for i in range(3)], name="n")

    result = await session(store, inbox.notifier()).run()

    assert result.exit_code == ExitCode.OK
    (document,) = inbox.documents
    assert result.last is not None
    cost = result.last.costs[batch_id].usd
    assert cost is not None and cost > 0
    assert document == {
        "event": "ended",
        "batch": {"id": batch_id, "name": "n", "endpoint": "simulator"},
        "request_counts": {
            "processing": 0,
            "succeeded": 3,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        },
        "cost_usd": round(cost, 8),
        "reason": None,
        "continue_command": None,
        "at": document["at"],
        "version": 1,
        "batchrun_version": __version__,
    }
    assert datetime.fromisoformat(document["at"]).tzinfo is not None


@pytest.mark.looptime
async def test_a_budget_pause_is_told_with_its_reason_and_the_command_that_continues(
    sqlite_store: Store,
) -> None:
    inbox = Inbox()
    lines = [request_line(f"r{i:02d}", model=HAIKU, max_tokens=1000) for i in range(40)]
    batch_id = submit_with(sqlite_store, lines)

    result = await session(
        sqlite_store, inbox.notifier(), max_cost_usd=0.003, max_concurrency=1
    ).run()

    assert result.exit_code == ExitCode.PAUSED
    (document,) = inbox.documents
    assert document["event"] == "paused"
    assert "max-cost $0.0030 reached" in document["reason"]
    assert document["continue_command"] == f"batchrun run {batch_id}"
    counts = document["request_counts"]
    assert 0 < counts["succeeded"] < 40 and counts["processing"] == 40 - counts["succeeded"]
    assert 0 < document["cost_usd"] <= 0.003


@pytest.mark.looptime
async def test_a_batch_paused_again_for_the_same_reason_is_not_told_again(store: Store) -> None:
    inbox = Inbox()
    batch_id = submit(store, [request_line(f"r{i}", "[[sim:status=401]] hi") for i in range(3)])

    first = await session(store, inbox.notifier()).run()
    again = await session(store, inbox.notifier()).run()

    assert first.exit_code == again.exit_code == ExitCode.PAUSED
    assert inbox.events() == [("paused", batch_id)]
    (document,) = inbox.documents
    assert "authentication" in document["reason"].lower() or "401" in document["reason"]
    assert document["continue_command"] == f"batchrun run {batch_id}"


@pytest.mark.looptime
async def test_a_forever_run_tells_a_pause_once_and_an_end_as_it_comes(
    sqlite_store: Store,
) -> None:
    inbox = Inbox()
    refused = submit(sqlite_store, [request_line("a", "[[sim:status=401]] hi")])
    notifier = inbox.notifier()
    running = asyncio.create_task(
        session(sqlite_store, notifier, forever=True, poll_interval_s=1, max_runtime_s=20).run()
    )
    await asyncio.sleep(5)
    fine = submit(sqlite_store, [request_line("b")])

    await running

    assert inbox.events() == [("paused", refused), ("ended", fine)]


@pytest.mark.looptime
async def test_a_batch_that_ends_early_is_told_while_the_pass_goes_on(
    sqlite_store: Store,
) -> None:
    inbox = Inbox()
    quick = submit(sqlite_store, [request_line("q")])
    slow = submit(sqlite_store, [request_line("s", "[[sim:latency=30]] slow")])
    loop = asyncio.get_running_loop()
    start = loop.time()

    await session(sqlite_store, inbox.notifier()).run()

    assert inbox.events() == [("ended", quick), ("ended", slow)]
    # Within a look of the watch, not when the 30 s request ended the pass.
    assert inbox.times[0] - start <= NOTIFY_POLL_S + 2
    assert inbox.times[1] - start >= 30


@pytest.mark.looptime
async def test_an_interrupted_run_tells_the_batches_it_left(sqlite_store: Store) -> None:
    inbox = Inbox()
    batch_id = submit(
        sqlite_store, [request_line(f"r{i}", "[[sim:latency=10]] hi") for i in range(5)]
    )
    run = session(sqlite_store, inbox.notifier(), max_concurrency=1)
    running = asyncio.create_task(run.run())
    await asyncio.sleep(15)

    run.stop("interrupted by Ctrl-C")
    result = await running

    assert result.exit_code == ExitCode.INTERRUPTED
    (document,) = inbox.documents
    assert document["event"] == "interrupted"
    assert document["reason"] == "interrupted by Ctrl-C"
    assert document["continue_command"] == f"batchrun run {batch_id}"
    assert document["request_counts"]["processing"] > 0


@pytest.mark.looptime
async def test_a_time_limit_tells_nothing(sqlite_store: Store) -> None:
    inbox = Inbox()
    submit(sqlite_store, [request_line(f"r{i}", "[[sim:latency=10]] hi") for i in range(5)])

    result = await session(
        sqlite_store, inbox.notifier(), max_concurrency=1, max_runtime_s=15
    ).run()

    assert result.exit_code == ExitCode.TIME_LIMIT
    assert inbox.documents == []


@pytest.mark.looptime
async def test_an_expired_batch_is_told_with_the_resume_command(sqlite_store: Store) -> None:
    inbox = Inbox()
    lines = [request_line(f"r{i}", "[[sim:latency=4]] hi") for i in range(5)]
    batch_id = submit_with(sqlite_store, lines, expires_in_s=6)

    await session(sqlite_store, inbox.notifier(), max_concurrency=1).run()

    (document,) = inbox.documents
    assert document["event"] == "expired"
    assert document["request_counts"]["expired"] > 0
    assert document["reason"].startswith("expired at ")
    assert document["continue_command"] == f"batchrun resume {batch_id} --expires-in 24h"


@pytest.mark.looptime
async def test_a_receiver_that_never_answers_holds_the_end_of_the_run_a_bounded_time(
    sqlite_store: Store,
) -> None:
    inbox = Inbox(hang=True)
    submit(sqlite_store, [request_line("a")])
    loop = asyncio.get_running_loop()
    start = loop.time()

    result = await session(sqlite_store, inbox.notifier()).run()

    assert result.exit_code == ExitCode.OK
    assert loop.time() - start <= NOTIFY_EXIT_WAIT_S + 2
    assert NOTIFY_RETRY_WINDOW_S <= NOTIFY_EXIT_WAIT_S


async def test_a_receiver_that_is_down_leaves_the_run_as_it_was(
    sqlite_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    submit(sqlite_store, [request_line(f"r{i}") for i in range(2)])
    url = closed_port_url()
    notifier = WebhookNotifier(url, retry_window_s=0.3, first_backoff_s=0.05)

    result: RunResult = await session(sqlite_store, notifier).run()

    assert result.exit_code == ExitCode.OK
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "127.0.0.1:" in warnings[0] and "ended" in warnings[0]
    assert SECRET_PATH not in caplog.text and "s3cr3t" not in caplog.text


# -- which event, pure ------------------------------------------------------------------------

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
BATCH = BatchSummary(
    id="msgbatch_1",
    name=None,
    endpoint="anthropic",
    source=None,
    created_at=NOW - timedelta(hours=1),
    expires_at=NOW + timedelta(hours=23),
    cancel_initiated_at=None,
    ended_at=None,
    paused_reason=None,
    counts=RequestCounts(processing=4, succeeded=6),
)
ENDED = replace(BATCH, ended_at=NOW, counts=RequestCounts(succeeded=10))
CANCELED = replace(ENDED, cancel_initiated_at=NOW, counts=RequestCounts(succeeded=6, canceled=4))
EXPIRED = replace(BATCH, expires_at=NOW, ended_at=NOW, counts=RequestCounts(succeeded=6, expired=4))


@pytest.mark.parametrize(
    ("batch", "paused", "before", "interrupted", "final", "expected"),
    [
        (ENDED, None, None, None, False, ("ended", None)),
        (CANCELED, None, None, None, False, ("canceled", None)),
        (
            EXPIRED,
            None,
            None,
            None,
            False,
            ("expired", "expired at 2030-01-01 12:00:00 UTC with requests unsent"),
        ),
        (BATCH, "key refused", None, None, False, ("paused", "key refused")),
        (BATCH, "key refused", "key refused", None, True, None),
        (BATCH, "key refused", "budget", None, True, ("paused", "key refused")),
        (BATCH, None, None, "interrupted by SIGTERM", False, None),
        (
            BATCH,
            None,
            None,
            "interrupted by SIGTERM",
            True,
            ("interrupted", "interrupted by SIGTERM"),
        ),
        (
            replace(BATCH, expires_at=NOW),
            None,
            None,
            None,
            True,
            ("expired", "expired at 2030-01-01 12:00:00 UTC with requests unsent"),
        ),
        (BATCH, None, None, None, True, None),
    ],
)
async def test_the_event_of_a_batch(
    batch: BatchSummary,
    paused: str | None,
    before: str | None,
    interrupted: str | None,
    final: bool,
    expected: tuple[str, str | None] | None,
) -> None:
    found = event_of(
        batch,
        paused=paused,
        paused_before=before,
        interrupted=interrupted,
        final=final,
        now=NOW,
    )

    assert found == expected


async def test_the_continue_command_of_each_event() -> None:
    def command(batch: BatchSummary, event: Any) -> str | None:
        document = notice_of(batch, event, reason=None, cost=CostTotal(), at=NOW)
        return document.continue_command

    assert command(ENDED, "ended") is None
    assert command(CANCELED, "canceled") == "batchrun resume msgbatch_1"
    assert command(replace(CANCELED, counts=RequestCounts(succeeded=10)), "canceled") is None
    assert command(EXPIRED, "expired") == "batchrun resume msgbatch_1 --expires-in 24h"
    assert command(BATCH, "paused") == "batchrun run msgbatch_1"
    assert command(BATCH, "interrupted") == "batchrun run msgbatch_1"


async def test_the_document_has_the_documented_keys_in_order() -> None:
    document = notice_of(BATCH, "paused", reason="why", cost=CostTotal(), at=NOW).model_dump(
        mode="json"
    )

    assert list(document) == [
        "event",
        "batch",
        "request_counts",
        "cost_usd",
        "reason",
        "continue_command",
        "at",
        "version",
        "batchrun_version",
    ]
    assert document["at"] == "2030-01-01T12:00:00+00:00"
    assert Notice.model_validate(document).event == "paused"
