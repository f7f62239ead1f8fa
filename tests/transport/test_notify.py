"""The webhook notifier: delivery to a real receiver on 127.0.0.1, what is tried again and
for how long (an in-process transport in virtual time: looptime), pacing, and that neither
the URL's secret path nor the receiver's body reaches a log."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import httpx
import pytest

from batchrun import __version__
from batchrun.transport.notify import (
    NOTIFY_BURST,
    NOTIFY_RETRY_WINDOW_S,
    WebhookNotifier,
    webhook_host,
)
from tests.webhooks import BODY_MARKER, SECRET_PATH, closed_port_url, running_webhook_receiver

pytestmark = pytest.mark.asyncio

DOCUMENT = {"event": "ended", "batch": {"id": "msgbatch_1"}}
FAKE_URL = f"https://hooks.example.com{SECRET_PATH}"


def quick(url: str, **options: float) -> WebhookNotifier:
    """A notifier whose back-off is a few milliseconds (real-server tests do not sleep)."""
    return WebhookNotifier(url, first_backoff_s=0.01, max_backoff_s=0.02, **options)


def no_secret_in(caplog: pytest.LogCaptureFixture) -> None:
    text = caplog.text
    assert SECRET_PATH not in text and "xoxb" not in text and "s3cr3t" not in text
    assert BODY_MARKER not in text


# -- a real receiver ---------------------------------------------------------------------------


async def test_the_document_is_posted_as_json_to_the_url_with_its_path() -> None:
    with running_webhook_receiver() as receiver:
        delivered = await quick(receiver.url).send(DOCUMENT, what="batch msgbatch_1 ended")

    assert delivered
    (post,) = receiver.posts
    assert post.path == f"{SECRET_PATH}?token=q-s3cr3t"
    assert post.json() == DOCUMENT
    assert post.headers["content-type"] == "application/json"
    assert post.headers["user-agent"] == f"batchrun/{__version__}"


async def test_two_server_errors_then_success_deliver_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_webhook_receiver(500, 503) as receiver:
        delivered = await quick(receiver.url).send(DOCUMENT, what="batch msgbatch_1 ended")

    assert delivered
    assert [post.status for post in receiver.posts] == [500, 503, 200]
    assert receiver.delivered() == [DOCUMENT]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_client_error_is_final_and_logged_without_the_url_or_the_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_webhook_receiver(404) as receiver:
        delivered = await quick(receiver.url).send(DOCUMENT, what="batch msgbatch_1 ended")

    assert not delivered
    assert len(receiver.posts) == 1
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "batch msgbatch_1 ended" in warning.getMessage()
    assert receiver.host in warning.getMessage() and "HTTP 404" in warning.getMessage()
    no_secret_in(caplog)


async def test_failures_that_last_are_logged_with_the_host_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_webhook_receiver(*[500] * 50) as receiver:
        delivered = await quick(receiver.url, retry_window_s=0.5).send(DOCUMENT, what="b")

    assert not delivered
    assert 1 < len(receiver.posts) < 50
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert receiver.host in message
    # The last try's reason: its 500, or, on a busy machine, no answer within what was left
    # of the window.
    assert "HTTP 500" in message or "no answer within" in message, message
    no_secret_in(caplog)


async def test_a_receiver_that_is_down_is_tried_for_the_window_then_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = closed_port_url()
    loop = asyncio.get_running_loop()
    started = loop.time()

    delivered = await quick(url, retry_window_s=0.3).send(DOCUMENT, what="batch b ended")

    assert not delivered
    assert loop.time() - started < 2
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert webhook_host(url) in warning.getMessage()
    assert "ConnectError" in warning.getMessage()
    no_secret_in(caplog)


async def test_httpx_debug_logs_show_the_host_instead_of_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="httpx")
    caplog.set_level(logging.DEBUG, logger="batchrun")
    with running_webhook_receiver() as receiver:
        assert await quick(receiver.url).send(DOCUMENT, what="b")

    assert f"<webhook {receiver.host}>" in caplog.text
    no_secret_in(caplog)
    # The filter goes with the notification.
    assert not logging.getLogger("httpx").filters


# -- retries and pacing, in virtual time --------------------------------------------------------


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def recording(answers: Callable[[int], httpx.Response]) -> tuple[list[float], Handler]:
    """An in-process receiver: the loop time of each POST, and ``answers(n)`` to the n-th."""
    times: list[float] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        times.append(asyncio.get_running_loop().time())
        assert json.loads(request.content)
        return answers(len(times))

    return times, handle


@pytest.mark.looptime
async def test_the_back_off_doubles_and_ends_within_the_window() -> None:
    times, handle = recording(lambda n: httpx.Response(503))
    notifier = WebhookNotifier(FAKE_URL, transport=httpx.MockTransport(handle))
    start = asyncio.get_running_loop().time()

    assert not await notifier.send(DOCUMENT, what="b")

    gaps = [round(b - a, 3) for a, b in zip([start, *times], times, strict=False)]
    assert gaps == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert asyncio.get_running_loop().time() - start < NOTIFY_RETRY_WINDOW_S


@pytest.mark.looptime
async def test_a_short_retry_after_is_honoured_and_a_long_one_ends_the_tries() -> None:
    times, handle = recording(
        lambda n: (
            httpx.Response(429, headers={"retry-after": "3"}) if n == 1 else httpx.Response(204)
        )
    )
    assert await WebhookNotifier(FAKE_URL, transport=httpx.MockTransport(handle)).send(
        DOCUMENT, what="b"
    )
    assert round(times[1] - times[0], 3) == 3.0

    long_times, long_handle = recording(
        lambda n: httpx.Response(503, headers={"retry-after": "60"})
    )
    assert not await WebhookNotifier(FAKE_URL, transport=httpx.MockTransport(long_handle)).send(
        DOCUMENT, what="b"
    )
    assert len(long_times) == 1


@pytest.mark.looptime
async def test_a_receiver_that_never_answers_costs_the_window_at_most() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    loop = asyncio.get_running_loop()
    start = loop.time()

    assert not await WebhookNotifier(FAKE_URL, transport=httpx.MockTransport(hang)).send(
        DOCUMENT, what="b"
    )

    assert loop.time() - start <= NOTIFY_RETRY_WINDOW_S + 0.5


@pytest.mark.looptime
async def test_a_redirect_is_not_followed() -> None:
    times, handle = recording(lambda n: httpx.Response(302, headers={"location": "http://x/"}))

    assert not await WebhookNotifier(FAKE_URL, transport=httpx.MockTransport(handle)).send(
        DOCUMENT, what="b"
    )

    assert len(times) == 1


@pytest.mark.looptime
async def test_many_notifications_at_once_are_paced_after_a_burst() -> None:
    times, handle = recording(lambda n: httpx.Response(200))
    notifier = WebhookNotifier(FAKE_URL, transport=httpx.MockTransport(handle))
    start = asyncio.get_running_loop().time()

    sent = await asyncio.gather(
        *(notifier.send(DOCUMENT, what="b") for _ in range(NOTIFY_BURST + 3))
    )

    assert all(sent)
    offsets = sorted(round(t - start, 1) for t in times)
    assert offsets[:NOTIFY_BURST] == [0.0] * NOTIFY_BURST
    assert offsets[NOTIFY_BURST:] == [1.0, 2.0, 3.0]


async def test_what_is_not_json_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    times, handle = recording(lambda n: httpx.Response(200))
    notifier = WebhookNotifier(FAKE_URL, transport=httpx.MockTransport(handle))

    assert not await notifier.send({"cost": float("nan")}, what="b")

    assert times == [] and "not JSON" in caplog.text


async def test_the_host_is_all_that_is_shown_of_a_url() -> None:
    assert webhook_host(FAKE_URL) == "hooks.example.com"
    assert webhook_host("http://user:pw@127.0.0.1:8080/x?token=t") == "127.0.0.1:8080"
    assert webhook_host("http://[::1]:9/x") == "[::1]:9"
    assert repr(WebhookNotifier(FAKE_URL)) == "WebhookNotifier(host='hooks.example.com')"
