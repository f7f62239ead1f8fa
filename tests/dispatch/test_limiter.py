"""The limiter: bucket arithmetic, pacing, reconciliation, server feedback and learning.

Everything runs in virtual time (looptime); the end-to-end cases drive the dispatcher against
the in-process simulator with its own rate limits and read what the simulator admitted.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import struct
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from batchrun.dispatch.settings import DispatchConfig
from batchrun.input.estimate import estimate_input_tokens
from batchrun.limits.buckets import TokenBucket
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.learning import InputCalibration, OutputEstimate
from batchrun.limits.limiter import Demand, Limiter, LimiterSettings
from batchrun.records import Retryable, ServerLimits, Succeeded, Usage, error_body
from batchrun.simulator import ModelLimits, SimulatorConfig, create_app
from batchrun.store.store import Store
from batchrun.transport.endpoints import SIMULATOR, builtin_endpoints
from batchrun.transport.ratelimit_headers import dimensions_named, parse_server_limits
from tests.conftest import memory_grown_by, request_line, submit
from tests.dispatch.helpers import dispatch

KEY = ("ep", "claude-sonnet-4-5")
# The pacing arithmetic alone, without the start-up ramp (tested in test_limits_shared).
NO_RAMP = LimiterSettings(ramp_s=0)


def succeeded(input_tokens: int, output_tokens: int, limits: ServerLimits | None = None):
    return Succeeded("{}", "m", "end_turn", Usage(input_tokens, output_tokens), None, limits)


def rate_limited(retry_after_s: float | None, message: str = "rate limited"):
    return Retryable("HTTP 429", error_body("rate_limit_error", message), 429, retry_after_s)


# -- pure parts ---------------------------------------------------------------------------


def test_a_bucket_refills_continuously_up_to_its_capacity() -> None:
    bucket = TokenBucket.empty(rate_per_s=10, burst_s=1, now=0)

    assert bucket.wait_s(1, now=0) == pytest.approx(0.1)
    assert bucket.available(now=0.5) == pytest.approx(5)
    assert bucket.available(now=30) == pytest.approx(10)


def test_reading_a_bucket_level_ahead_changes_nothing() -> None:
    bucket = TokenBucket.empty(rate_per_s=10, burst_s=1, now=0)
    bucket.take(5, now=0)

    assert bucket.level_at(0.2) == pytest.approx(-3)
    assert bucket.level_at(30) == pytest.approx(10)
    # Still as it was: it filled at 1.5 s, not when it was read.
    assert (bucket.level, bucket.updated_at) == (-5, 0)
    assert bucket.full_at() == pytest.approx(1.5)


def test_a_bucket_admits_a_cost_bigger_than_itself_when_full_and_goes_into_debt() -> None:
    bucket = TokenBucket.empty(rate_per_s=10, burst_s=1, now=0)

    assert bucket.wait_s(50, now=0) == pytest.approx(1.0)
    bucket.take(50, now=1.0)
    assert bucket.available(now=1.0) == pytest.approx(-40)
    assert bucket.wait_s(1, now=1.0) == pytest.approx(4.1)


def test_corrections_move_the_level_but_never_above_capacity() -> None:
    bucket = TokenBucket.empty(rate_per_s=10, burst_s=1, now=0)
    bucket.take(5, now=1)

    bucket.adjust(+3, now=1)
    assert bucket.available(now=1) == pytest.approx(8)
    bucket.adjust(+100, now=1)
    assert bucket.available(now=1) == pytest.approx(10)
    bucket.adjust(-25, now=1)
    assert bucket.available(now=1) == pytest.approx(-15)


def test_the_estimate_counts_text_framing_and_images_by_the_patch_formula() -> None:
    text_only = {"model": "m", "messages": [{"role": "user", "content": "x" * 350}]}
    with_image = {
        "model": "claude-sonnet-4-5",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": _png_source(1000, 1000)}],
            }
        ],
    }

    assert estimate_input_tokens(text_only) == 100 + 3
    assert estimate_input_tokens(with_image) == 1296 + 3


def test_calibration_converges_on_the_observed_ratio() -> None:
    calibration = InputCalibration()
    for _ in range(30):
        calibration.observe(raw_tokens=1000, actual_tokens=870)

    assert calibration.estimate(2000) == pytest.approx(1740, abs=1)


def test_the_output_estimate_reserves_max_tokens_until_it_has_seen_replies() -> None:
    outputs = OutputEstimate()
    assert outputs.reserve(1024) == 1024
    for tokens in [38, 42, 40, 41, 39, 40]:
        outputs.observe(tokens)

    assert 40 <= outputs.reserve(1024) <= 50
    assert outputs.reserve(30) == 30


def test_rate_limit_headers_are_parsed_per_dimension() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    headers = {
        "anthropic-ratelimit-requests-limit": "600",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": (now + timedelta(seconds=7)).isoformat(),
        "anthropic-ratelimit-input-tokens-limit": "80,000",
        "anthropic-ratelimit-input-tokens-remaining": "12000",
    }

    limits = parse_server_limits(headers)

    assert limits is not None
    assert limits.limits == {"rpm": 600, "itpm": 80000}
    assert limits.exhausted() == {"rpm"}
    assert limits.wait_s(now) == pytest.approx(7)
    assert parse_server_limits({"content-type": "application/json"}) is None


def test_a_gateways_x_ratelimit_headers_are_read_the_tightest_scope_binding() -> None:
    # LiteLLM's proxy: one pair per limit that applies, scoped by what it limits.
    litellm = {
        "x-ratelimit-api_key-limit-requests": "120",
        "x-ratelimit-api_key-remaining-requests": "117",
        "x-ratelimit-team-limit-requests": "90",
        "x-ratelimit-team-remaining-requests": "12",
        "x-ratelimit-api_key-limit-tokens": "60000",
        "x-ratelimit-api_key-remaining-tokens": "bad",
        "x-litellm-key-rpm-limit": "120",
    }
    limits = parse_server_limits(litellm)
    assert limits is not None
    assert limits.limits == {"rpm": 90, "tpm": 60000}
    assert limits.remaining == {"rpm": 12}
    # OpenAI's form, which OpenAI-compatible gateways copy; the reset (a duration) is unread.
    openai = {
        "X-RateLimit-Limit-Requests": "500",
        "X-RateLimit-Remaining-Requests": "0",
        "X-RateLimit-Reset-Requests": "6m0s",
    }
    limits = parse_server_limits(openai)
    assert limits is not None
    assert (limits.limits, limits.exhausted(), limits.reset_at) == ({"rpm": 500}, {"rpm"}, {})


def test_anthropics_headers_win_over_a_gateways_for_the_same_limit() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "600",
        "anthropic-ratelimit-requests-remaining": "599",
        "x-ratelimit-api_key-limit-requests": "120",
        "x-ratelimit-api_key-remaining-requests": "3",
        "x-ratelimit-api_key-limit-tokens": "-5",
        "x-ratelimit-limit-requests-per-day": "100",
        "x-ratelimit-api_key-limit-input-tokens": "inf",
    }
    limits = parse_server_limits(headers)
    assert limits is not None
    assert (limits.limits, limits.remaining) == ({"rpm": 600}, {"rpm": 599})


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ("would exceed the rate limit of 30,000 input tokens per minute", {"itpm"}),
        ("... 8,000 output tokens per minute ...", {"otpm"}),
        ("... 60,000 tokens per minute ...", {"tpm"}),
        ("... 50 requests per minute ...", {"rpm"}),
        ("Too Many Requests", set()),
    ],
)
def test_429_messages_name_the_limit(message: str, named: set[str]) -> None:
    assert dimensions_named(message) == named


# -- the limiter in virtual time --------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_sends_are_paced_from_the_first_request_without_a_burst() -> None:
    limiter = Limiter({KEY: RateLimits(rpm=600)}, settings=NO_RAMP)
    loop = asyncio.get_running_loop()
    start = loop.time()
    granted = []
    for _ in range(20):
        await limiter.acquire(KEY, Demand(10, 100))
        granted.append(loop.time() - start)

    assert granted == pytest.approx([0.1 * (i + 1) for i in range(20)])


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_unused_reservations_are_given_back() -> None:
    limiter = Limiter(
        {KEY: RateLimits(tpm=6000)},
        settings=LimiterSettings(output_reservation="max_tokens", ramp_s=0),
    )
    loop = asyncio.get_running_loop()
    # 100 tokens/s; a bucket of 1 s. Each request reserves 10 input + 90 output = 100.
    permit = await limiter.acquire(KEY, Demand(10, 90))
    assert loop.time() == pytest.approx(1.0)
    limiter.settle(permit, succeeded(10, 10))  # 80 of the 100 come back

    await limiter.acquire(KEY, Demand(10, 90))
    assert loop.time() == pytest.approx(1.2)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cache_reads_do_not_count_towards_itpm() -> None:
    limiter = Limiter({KEY: RateLimits(itpm=6000)}, settings=NO_RAMP)  # 100 input tokens/s
    loop = asyncio.get_running_loop()
    permit = await limiter.acquire(KEY, Demand(100, 10))
    usage = Usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=90)
    limiter.settle(permit, Succeeded("{}", "m", None, usage, None))
    start = loop.time()

    await limiter.acquire(KEY, Demand(100, 10))

    # 90 of the 100 reserved came back: 0.1 s of refill covers the rest.
    assert loop.time() - start == pytest.approx(0.1)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_429_pauses_the_key_for_its_whole_retry_after() -> None:
    # Unpaced while nothing is known (no start rate): only the pause holds the key back.
    limiter = Limiter(settings=LimiterSettings(start_per_min=None))
    loop = asyncio.get_running_loop()
    permit = await limiter.acquire(KEY, Demand(10, 10))
    limiter.settle(permit, rate_limited(retry_after_s=90))

    await limiter.acquire(KEY, Demand(10, 10))

    assert loop.time() == pytest.approx(90)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_announced_limits_replace_higher_configured_ones() -> None:
    limiter = Limiter({KEY: RateLimits(rpm=1200)})
    permit = await limiter.acquire(KEY, Demand(10, 10))
    announced = ServerLimits(limits={"rpm": 600.0, "itpm": 30000.0})

    limiter.settle(permit, succeeded(10, 10, announced))

    assert limiter.limit_in_force(KEY, "rpm") == 600
    assert limiter.limit_in_force(KEY, "itpm") == 30000


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_server_remaining_capacity_keeps_the_local_bucket_honest() -> None:
    limiter = Limiter({KEY: RateLimits(rpm=600)}, settings=NO_RAMP)
    loop = asyncio.get_running_loop()
    permit = await limiter.acquire(KEY, Demand(10, 10))
    await asyncio.sleep(5)  # our bucket is full again: 10 requests
    # ... but another client uses the same key: the server has room for 2 only.
    limiter.settle(permit, succeeded(10, 10, ServerLimits(remaining={"rpm": 2.0})))
    start = loop.time()

    for _ in range(3):
        await limiter.acquire(KEY, Demand(10, 10))

    assert loop.time() - start == pytest.approx(0.1)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_529_backs_off_without_lowering_the_limit() -> None:
    limiter = Limiter({KEY: RateLimits(rpm=600)})
    loop = asyncio.get_running_loop()
    overloaded = Retryable("HTTP 529", error_body("overloaded_error", "Overloaded"), 529)
    for expected_pause in (1, 2, 4):
        permit = await limiter.acquire(KEY, Demand(10, 10))
        start = loop.time()
        limiter.settle(permit, overloaded)
        await limiter.acquire(KEY, Demand(10, 10))
        assert loop.time() - start == pytest.approx(expected_pause, abs=0.11)

    assert limiter.limit_in_force(KEY, "rpm") == 600


# -- against the simulator's own limits ---------------------------------------------------------


def _png_source(width: int, height: int) -> dict[str, str]:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    return {"type": "base64", "media_type": "image/png", "data": base64.b64encode(png).decode()}


def utilisation(
    app: object, *, limit_per_min: float, column: str, skip_s: int, tail_s: int = 5
) -> float:
    """Share of the limit the simulator admitted per second over the steady window."""
    seconds = app.stats.admitted_by_second  # type: ignore[attr-defined]
    first, last = min(seconds), max(seconds)
    window = range(first + skip_s, last - tail_s)
    index = {"requests": 0, "input": 1, "output": 2, "tokens": None}[column]
    total = 0.0
    for second in window:
        counts = seconds.get(second, [0, 0, 0])
        total += counts[1] + counts[2] if index is None else counts[index]
    return total / len(window) / (limit_per_min / 60)


def rejected_share(app: object) -> float:
    stats = app.stats  # type: ignore[attr-defined]
    return stats.by_status.get("429", 0) / stats.received


@pytest.mark.timeout(300)  # thousands of requests; slow on a busy machine
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_rpm_bound_runs_at_the_limit_without_429s(sqlite_store: Store) -> None:
    store = sqlite_store
    server = ModelLimits(rpm=600, burst_s=2)
    app = create_app(SimulatorConfig(limits={"*": server}, latency_s=1.5))
    batch_id = submit(store, [request_line(f"r{i}", f"q{i}") for i in range(900)])

    await dispatch(store, batch_id, app, limits=RateLimits(rpm=600))

    assert utilisation(app, limit_per_min=600, column="requests", skip_s=5) >= 0.99
    assert rejected_share(app) == 0


@pytest.mark.timeout(300)  # thousands of requests; slow on a busy machine
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_tpm_bound_with_short_replies_uses_the_token_limit(sqlite_store: Store) -> None:
    store = sqlite_store
    server = ModelLimits(tpm=60_000, burst_s=2)
    app = create_app(SimulatorConfig(limits={"*": server}, latency_s=2.0, output_tokens=40))
    text = "Summarise the following note in one sentence. " * 8
    lines = [request_line(f"r{i}", f"{i} {text}", max_tokens=1024) for i in range(900)]
    batch_id = submit(store, lines)

    await dispatch(store, batch_id, app, limits=RateLimits(tpm=60_000))

    assert utilisation(app, limit_per_min=60_000, column="tokens", skip_s=15) >= 0.97
    assert rejected_share(app) <= 0.01


@pytest.mark.timeout(300)  # thousands of requests; slow on a busy machine
@pytest.mark.parametrize("headers", [True, False], ids=["with-headers", "retry-after-only"])
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_configured_limit_twice_the_servers_converges_on_the_servers(
    sqlite_store: Store, headers: bool
) -> None:
    store = sqlite_store
    server = ModelLimits(rpm=600, burst_s=2)
    config = SimulatorConfig(limits={"*": server}, latency_s=1.0, send_ratelimit_headers=headers)
    app = create_app(config)
    batch_id = submit(store, [request_line(f"r{i}", f"q{i}") for i in range(1500)])

    await dispatch(store, batch_id, app, limits=RateLimits(rpm=1200))

    assert store.batches.get(batch_id).counts.succeeded == 1500
    floor, ceiling = (0.95, 0.05) if headers else (0.90, 0.10)
    assert utilisation(app, limit_per_min=600, column="requests", skip_s=30) >= floor
    assert rejected_share(app) <= ceiling


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_image_input_estimates_converge_within_15_percent(sqlite_store: Store) -> None:
    store = sqlite_store
    app = create_app(SimulatorConfig(latency_s=0.5))
    lines = []
    for i in range(200):
        size = 300 + (i * 37) % 1400
        content = [
            {"type": "image", "source": _png_source(size, size * 3 // 4)},
            {"type": "text", "text": f"Describe image {i} in detail, please."},
        ]
        line = request_line(f"img{i}")
        line["params"]["messages"] = [{"role": "user", "content": content}]
        lines.append(line)
    batch_id = submit(store, lines)

    config = DispatchConfig(max_concurrency=4)
    await dispatch(store, batch_id, app, config=config, limits=RateLimits(itpm=600_000))

    errors = store_estimate_errors(store, batch_id)
    late = errors[len(errors) // 2 :]
    assert max(late) <= 0.15


def store_estimate_errors(store: Store, batch_id: str) -> list[float]:
    """|estimate - actual| / actual of every succeeded request, in completion order."""
    from sqlalchemy import select

    from batchrun.store import tables as t

    with store.engine.connect() as conn:  # reading the analysts' columns directly
        rows = conn.execute(
            select(t.results.c.estimated_input_tokens, t.results.c.input_tokens)
            .where(t.results.c.batch_id == batch_id)
            .order_by(t.results.c.completed_at, t.results.c.request_id)
        ).all()
    return [abs(estimate - actual) / actual for estimate, actual in rows]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_count_tokens_replaces_the_estimate_with_the_endpoints_count(
    sqlite_store: Store,
) -> None:
    app = create_app()
    batch_id = submit(
        sqlite_store, [request_line(f"r{i}", "word " * (20 * i + 5)) for i in range(8)]
    )

    # 120 a minute, not the default 100: looptime rounds virtual time to 1 us, and at a 0.6 s
    # interval aiolimiter's float remainder (1e-16) is re-timed for the same virtual instant
    # forever; a real clock moves on (checked by hand: 0.0, 0.601, 1.202, ... s).
    endpoint = replace(builtin_endpoints({})[SIMULATOR], count_tokens_rpm=120.0)
    await dispatch(
        sqlite_store, batch_id, app, config=DispatchConfig(count_tokens=True), endpoint=endpoint
    )

    assert app.stats.count_tokens_received == 8
    assert store_estimate_errors(sqlite_store, batch_id) == [0.0] * 8
    # count_tokens has its own limit: one call per interval (0.5 s here), never a burst.
    counted_at = [e.loop_time for e in app.stats.log if e.path.endswith("/count_tokens")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(counted_at)]
    assert min(gaps) >= 0.5 - 1e-6


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_long_run_without_429s_keeps_only_its_measuring_window_in_memory() -> None:
    limiter = Limiter()

    async def answer(count: int) -> None:
        for _ in range(count):
            permit = await limiter.acquire(KEY, Demand(10, 100))
            limiter.settle(permit, succeeded(10, 20))
            await asyncio.sleep(0.1)

    # 50 s: the 20 s measuring window is full.
    grown = await memory_grown_by(answer(2_000), after=answer(500))

    # Keeping every answer would add several hundred bytes each (over 0.5 MB here).
    assert grown < 100_000
