"""The limits a batch ran under (``batch_limits``, ``batchrun.ops.limit_recorder`` and
``batchrun.ops.views.run_limits``): real runs against the simulator record the limits of each run
per batch (flags, configured, announced, learned), and the report and the dashboard show the
batch's own, not today's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

import batchrun
from batchrun.config.prices import PriceTable
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.families import ALL_MODELS
from batchrun.limits.limiter import Demand, Limiter
from batchrun.ops.limit_recorder import MAX_CHANGES_PER_LIMIT, LimitRecorder
from batchrun.ops.monitor import RunMonitor
from batchrun.ops.views.dashboard import DashboardData
from batchrun.ops.views.run_limits import runs_of
from batchrun.records import ServerLimits, Succeeded, Usage
from batchrun.simulator import ModelLimits, SimulatorConfig, running_simulator
from batchrun.store.run_limits import LimitRecord
from batchrun.store.store import Store
from batchrun.transport.endpoints import Endpoint, Endpoints, builtin_endpoints
from tests.conftest import request_line, submit

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[batchrun.Client]:
    """A client on a fresh database that sees no config file and no key of this machine."""
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def _submit(client: batchrun.Client, name: str, prompts: list[str], endpoint: str) -> str:
    lines = [request_line(f"{name}-{i}", prompt) for i, prompt in enumerate(prompts)]
    return client.submit(lines, endpoint=endpoint, name=name).id


def _card_limits(client: batchrun.Client, batch_id: str) -> dict[str, tuple[float | None, ...]]:
    """The dashboard card's limits of the batch: dimension → (flag, configured, limit)."""
    store = Store.open(client.database_url)
    try:
        batch = store.batches.get(batch_id)
        data = DashboardData(store, known=client.endpoints(), prices=client.prices())
        (card,) = data.cards([batch], now=datetime.now(UTC))
        json = card.as_json()
        assert json["limits_recorded"] is True
        assert json["limits_run"] is not None
        return {use.dimension: (use.flag, use.configured, use.limit) for use in card.limits}
    finally:
        store.close()


def test_each_batch_shows_the_limits_of_the_run_that_sent_it_not_a_later_runs(
    client: batchrun.Client,
) -> None:
    first = _submit(client, "first", ["one", "two", "three"], "simulator")
    assert client.run(first, limits={"rpm": 600}).exit_code == 0
    second = _submit(client, "second", ["four", "five"], "simulator")
    assert client.run(second, limits={"rpm": 900}).exit_code == 0

    for batch_id, rpm in ((first, 600.0), (second, 900.0)):
        report = client.report(batch_id)
        (limit,) = report.limits
        assert (limit.dimension, limit.flag, limit.configured, limit.limit) == (
            "rpm",
            rpm,
            None,
            rpm,
        )
        (run,) = report.runs
        assert [(item.dimension, item.flag, item.lowest) for item in run.limits] == [
            ("rpm", rpm, rpm)
        ]
        page = client.report_html(batch_id)
        assert "No rate limit" not in page
        assert f"{rpm:,.0f}/min" in page
        assert _card_limits(client, batch_id) == {"rpm": (rpm, None, rpm)}


def test_a_batch_sent_with_no_limit_known_says_so_after_a_later_run_with_a_flag(
    client: batchrun.Client,
) -> None:
    unlimited = _submit(client, "unlimited", ["one", "two"], "simulator")
    assert client.run(unlimited).exit_code == 0
    later = _submit(client, "later", ["three"], "simulator")
    assert client.run(later, limits={"rpm": 900}).exit_code == 0

    report = client.report(unlimited)
    (run,) = report.runs
    assert run.keys == (("simulator", "claude-sonnet-4-5"),)
    # Nothing was configured or announced: the run found its limit from the start rate
    # (60 a minute, 30 more per answer), and that is the only limit it knew.
    (rpm,) = report.limits
    assert (rpm.dimension, rpm.configured, rpm.announced, rpm.flag) == ("rpm", None, None, None)
    assert rpm.learned == 60 + 2 * 30


def test_a_batch_not_sent_yet_says_no_run_recorded_its_limits(client: batchrun.Client) -> None:
    waiting = _submit(client, "waiting", ["one"], "simulator")

    report = client.report(waiting)

    assert (report.limits_recorded, report.runs, report.limits) == (False, (), ())
    page = client.report_html(waiting)
    assert "No run has recorded limits for it: nothing of it was sent in real time yet" in page


def test_a_batch_sent_by_two_runs_shows_the_latest_and_lists_each(
    client: batchrun.Client,
) -> None:
    batch_id = _submit(client, "twice", [f"q{i}" for i in range(20)], "simulator")
    # The time limit stops the first run after a few sends (run again until one was sent: on a
    # loaded machine half a second can end before the first send); the second sends the rest.
    for _ in range(20):
        assert client.run(batch_id, limits={"rpm": 600}, max_runtime_s=0.5).exit_code == 5
        if client.status(batch_id).request_counts.succeeded:
            break
    assert client.run(batch_id, limits={"rpm": 900}).exit_code == 0

    report = client.report(batch_id)
    first, second = report.runs
    assert [(limit.dimension, limit.flag) for limit in first.limits] == [("rpm", 600.0)]
    assert [(limit.dimension, limit.flag) for limit in second.limits] == [("rpm", 900.0)]
    assert first.started_at < second.started_at
    (limit,) = report.limits
    assert (limit.flag, limit.limit) == (900.0, 900.0)
    page = client.report_html(batch_id)
    assert "the latest run that sent this batch" in page
    assert "run started" in page and "600/min" in page and "900/min" in page
    assert 'data-series="rpm limit in force"' in page


def test_announced_and_learned_limits_are_recorded_with_the_run_that_met_them(
    db_url: str, tmp_path: Path
) -> None:
    # The server announces an output-token limit in its headers; requests are limited by
    # the configured 1,200 a minute, until a 429 without a retry-after teaches a lower
    # limit (a quarter off: too little history to measure from) that creeps back up.
    simulator = SimulatorConfig(limits={"*": ModelLimits(otpm=600_000)})
    prompts = [f"q{i}" for i in range(12)]
    prompts[1] = "q1 [[sim:status=429:times=1]]"
    with running_simulator(simulator) as url:
        config = tmp_path / "batchrun.toml"
        config.write_text(
            f'[endpoints.sim]\nbase_url = "{url}"\nauth = "none"\n'
            '[endpoints.sim.limits."*"]\nrpm = 1200\n'
        )
        with batchrun.Client(db_url, config=config, env={"HOME": str(tmp_path)}) as client:
            batch_id = _submit(client, "heard", prompts, "sim")
            assert client.run(batch_id, limits={"itpm": 5_000_000}).exit_code == 0
            report = client.report(batch_id)
            page = client.report_html(batch_id)

    (run,) = report.runs
    limits = {limit.dimension: limit for limit in run.limits}
    rpm = limits["rpm"]
    assert (rpm.configured, rpm.announced, rpm.flag) == (1200.0, None, None)
    assert rpm.steps[0][1] == 1200.0
    assert (rpm.learned, rpm.lowest) == (900.0, 900.0)
    assert limits["otpm"].announced == limits["otpm"].limit == 600_000.0
    # The page draws the limit in force over time, and lists the run with its changes.
    assert 'data-series="rpm limit in force"' in page
    assert "lowest in force" in page and "900/min" in page
    # The 429 named no limit: every limit in force was lowered, the flag's too.
    itpm = limits["itpm"]
    assert (itpm.flag, itpm.configured, itpm.learned) == (5_000_000.0, None, 3_750_000.0)
    assert itpm.steps[0][1] == 5_000_000.0


def _row(
    at_s: float,
    dimension: str | None,
    source: str,
    value: float | None,
    *,
    run: str = "r1",
    model: str = "m",
) -> LimitRecord:
    return LimitRecord(
        batch_id="b",
        run_id=run,
        run_started_at=T0 if run == "r1" else T0 + timedelta(hours=1),
        endpoint="e",
        model=model,
        dimension=dimension,
        source=source,
        value=value,
        since=T0 + timedelta(seconds=at_s),
    )


def test_a_runs_limit_in_force_is_the_flag_else_the_configured_one_lowered_by_what_was_heard() -> (
    None
):
    rows = [
        _row(0, None, "sent", None),
        _row(0, "rpm", "configured", 1000.0),
        _row(0, "rpm", "flag", 2000.0),
        _row(1, "rpm", "announced", 1500.0),
        _row(5, "rpm", "learned", 900.0),
        _row(20, "rpm", "learned", None),
        # A second key of the same run adds its limits; until it is sent, it counts nothing.
        _row(30, None, "sent", None, model="n"),
        _row(30, "rpm", "configured", 100.0, model="n"),
        # A later run.
        _row(0, None, "sent", None, run="r2"),
        _row(0, "otpm", "configured", 50.0, run="r2"),
    ]

    first, second = runs_of(rows)

    (rpm,) = first.limits
    assert [(int((at - T0).total_seconds()), value) for at, value in rpm.steps] == [
        (0, 2000.0),
        (1, 1500.0),
        (5, 900.0),
        (20, 1500.0),
        (30, 1600.0),
    ]
    assert (rpm.flag, rpm.configured, rpm.announced) == (None, 1100.0, None)
    assert (rpm.limit, rpm.lowest, rpm.learned, rpm.changes) == (1600.0, 900.0, 900.0, 4)
    assert first.keys == (("e", "m"), ("e", "n"))
    assert [limit.dimension for limit in second.limits] == ["otpm"]


def test_an_endpoints_limit_across_its_models_caps_the_sum_of_theirs() -> None:
    rows = [
        _row(0, None, "sent", None, model="m"),
        _row(0, "rpm", "configured", 1000.0, model="m"),
        _row(0, None, "sent", None, model="n"),
        _row(0, "rpm", "configured", 1000.0, model="n"),
        _row(0, None, "sent", None, model=ALL_MODELS),
        _row(0, "rpm", "configured", 1500.0, model=ALL_MODELS),
        _row(0, "tpm", "configured", 90_000.0, model=ALL_MODELS),
        # Lowered below the endpoint's, the models' sum binds again.
        _row(10, "rpm", "learned", 400.0, model="n"),
    ]

    (run,) = runs_of(rows)

    rpm, tpm = run.limits
    assert [(int((at - T0).total_seconds()), value) for at, value in rpm.steps] == [
        (0, 1500.0),
        (10, 1400.0),
    ]
    assert (rpm.configured, rpm.limit, rpm.learned) == (1500.0, 1400.0, 1400.0)
    # The models have no token limit: the endpoint's is the batch's.
    assert (tpm.dimension, tpm.configured, tpm.limit) == ("tpm", 90_000.0, 90_000.0)


def test_a_run_with_endpoint_limits_shows_the_total_it_held_the_batch_to(
    client: batchrun.Client,
) -> None:
    models = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]
    lines = [request_line(f"r{i}", f"q{i}", model=models[i % 3]) for i in range(6)]
    batch_id = client.submit(lines, endpoint="simulator").id

    result = client.run(batch_id, limits={"rpm": 6000}, endpoint_limits={"rpm": 600})

    assert result.exit_code == 0
    (limit,) = client.report(batch_id).limits
    # Three models at 6,000 each, capped at 600 for the endpoint: the batch ran under 600.
    assert (limit.dimension, limit.flag, limit.limit) == ("rpm", 600.0, 600.0)
    (run,) = client.report(batch_id).runs
    assert ("simulator", ALL_MODELS) in run.keys


def test_a_batch_not_sent_yet_shows_its_models_limits_capped_by_the_endpoints(
    db_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "batchrun.toml"
    config.write_text(
        '[endpoints.simulator.limits."*"]\nrpm = 600\n'
        "[endpoints.simulator.endpoint_limits]\nrpm = 900\notpm = 50000\n"
    )
    models = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]
    lines = [request_line(f"r{i}", model=model) for i, model in enumerate(models)]
    with batchrun.Client(db_url, config=config, env={"HOME": str(tmp_path)}) as client:
        batch_id = client.submit(lines, endpoint="simulator").id
        report = client.report(batch_id)

    assert report.limits_recorded is False
    shown = {use.dimension: (use.configured, use.limit) for use in report.limits}
    # Three models at 600 each would be 1,800: the endpoint's 900 is the batch's limit.
    assert shown == {"rpm": (900.0, 900.0), "otpm": (50_000.0, 50_000.0)}


def test_an_unknown_endpoint_limit_is_refused_before_anything_is_sent(
    client: batchrun.Client,
) -> None:
    batch_id = _submit(client, "refused", ["one"], "simulator")

    with pytest.raises(batchrun.ConfigError, match="endpoint_limits: unknown rate limit 'rpx'"):
        client.run(batch_id, endpoint_limits={"rpx": 5})

    assert client.status(batch_id).request_counts.processing == 1


def test_the_recorded_rows_go_with_their_batch(store: Store) -> None:
    batch_id = submit(store, [request_line("a", "hello")])
    rows = [
        LimitRecord(batch_id, "r1", T0, "simulator", "m" * 300, None, "sent", None, T0),
        LimitRecord(batch_id, "r1", T0, "simulator", "m", "rpm", "flag", 600.0, T0),
    ]
    store.run_limits.record(rows)

    found = store.run_limits.of_batches([batch_id, "other"])
    assert [(row.model, row.source, row.value) for row in found[batch_id]] == [
        ("m" * 200, "sent", None),
        ("m", "flag", 600.0),
    ]
    assert found[batch_id][0].since == T0 and "other" not in found
    store.lifecycle.cancel(batch_id, T0)
    store.lifecycle.delete(batch_id)
    assert store.run_limits.of_batches([batch_id]) == {}


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_limit_is_written_again_only_when_it_moves_by_more_than_five_percent_and_boundedly(
    sqlite_store: Store,
) -> None:
    batch_id = submit(sqlite_store, [request_line("a", "hello")])
    key = ("simulator", "claude-sonnet-4-5")
    flags = RateLimits(rpm=600)
    recorder = LimitRecorder(
        known=Endpoints(builtin_endpoints({}), "simulator", "test"), overrides=flags
    )
    db = WorkerDatabase(sqlite_store)
    monitor = RunMonitor(prices=PriceTable(), counts={})
    recorder.watching(monitor, db)
    recorder.attach(Limiter(overrides=flags))

    def announce(rpm: float) -> Succeeded:
        heard = ServerLimits(limits={"rpm": rpm})
        return Succeeded("{}", None, "end_turn", Usage(1, 1), None, server_limits=heard)

    try:
        recorder.sending(batch_id, key)
        for rpm in (1000.0, 1030.0, 1100.0, 1090.0, 500.0):
            await asyncio.sleep(1.0)
            recorder.answered(batch_id, key, announce(rpm))
        for step in range(2 * MAX_CHANGES_PER_LIMIT):
            await asyncio.sleep(1.0)
            recorder.answered(batch_id, key, announce(2000.0 if step % 2 else 4000.0))
        await recorder.pass_ended()
    finally:
        db.close()

    rows = sqlite_store.run_limits.of_batches([batch_id])[batch_id]
    assert [(row.source, row.value) for row in rows[:5]] == [
        ("sent", None),
        ("flag", 600.0),
        ("announced", 1000.0),
        ("announced", 1100.0),
        ("announced", 500.0),
    ]
    announced = [row for row in rows if row.source == "announced"]
    assert len(announced) == MAX_CHANGES_PER_LIMIT
    assert len(rows) == 2 + MAX_CHANGES_PER_LIMIT
    (run,) = runs_of(rows)
    (limit,) = run.limits
    assert limit.capped and limit.lowest == 500.0 and limit.flag == 600.0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_run_of_many_batches_keeps_a_bounded_record_and_still_records_each(
    sqlite_store: Store,
) -> None:
    batch_ids = [submit(sqlite_store, [request_line(f"b{i}", "hello")]) for i in range(5)]
    key = ("simulator", "claude-sonnet-4-5")
    flags = RateLimits(rpm=600)
    recorder = LimitRecorder(
        known=Endpoints(builtin_endpoints({}), "simulator", "test"), overrides=flags, pairs_kept=2
    )
    db = WorkerDatabase(sqlite_store)
    recorder.watching(RunMonitor(prices=PriceTable(), counts={}), db)
    recorder.attach(Limiter(overrides=flags))
    try:
        for batch_id in [*batch_ids, batch_ids[0]]:
            await asyncio.sleep(1.0)
            recorder.sending(batch_id, key)
        await recorder.pass_ended()
    finally:
        db.close()

    found = sqlite_store.run_limits.of_batches(batch_ids)
    # The first batch was forgotten by the time it sent again: recorded afresh.
    assert [row.source for row in found[batch_ids[0]]] == ["sent", "flag", "sent", "flag"]
    for batch_id in batch_ids:
        (run,) = runs_of(found[batch_id])
        assert [(limit.dimension, limit.flag, limit.changes) for limit in run.limits] == [
            ("rpm", 600.0, 0)
        ]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_limit_announced_before_the_run_is_not_taken_for_a_learned_one(
    sqlite_store: Store,
) -> None:
    # The shared record already holds a limit a server announced to an earlier run (300 a
    # minute, under the configured 1,200): the limiter applies it from the first send.
    batch_id = submit(sqlite_store, [request_line("a", "hello")], endpoint="gw")
    key = ("gw", "claude-sonnet-4-5")
    gateway = Endpoint("gw", "http://gw.invalid", limits={"*": RateLimits(rpm=1200)})
    limiter = Limiter({("gw", "*"): RateLimits(rpm=1200)})
    permit = await limiter.acquire(key, Demand(10, 10))
    limiter.settle(permit, _announcing(300.0))
    assert limiter.limit_in_force(key, "rpm") == 300.0
    recorder = LimitRecorder(known=Endpoints({"gw": gateway}, "gw", "test"), overrides=RateLimits())
    db = WorkerDatabase(sqlite_store)
    recorder.watching(RunMonitor(prices=PriceTable(), counts={}), db)
    recorder.attach(limiter)
    try:
        recorder.sending(batch_id, key)
        await asyncio.sleep(1.0)
        recorder.answered(batch_id, key, _announcing(300.0))
        await recorder.pass_ended()
    finally:
        db.close()

    rows = sqlite_store.run_limits.of_batches([batch_id])[batch_id]
    assert [(row.source, row.value) for row in rows] == [
        ("sent", None),
        ("configured", 1200.0),
        ("announced", 300.0),
    ]
    (run,) = runs_of(rows)
    (limit,) = run.limits
    assert (limit.announced, limit.learned, limit.limit) == (300.0, None, 300.0)


def _announcing(rpm: float) -> Succeeded:
    heard = ServerLimits(limits={"rpm": rpm})
    return Succeeded("{}", None, "end_turn", Usage(1, 1), None, server_limits=heard)


def test_serve_records_the_limits_its_workers_send_a_batch_under(
    db_url: str, tmp_path: Path
) -> None:
    from tests.server.serving import KEY_A, running_server, server_env
    from tests.server.test_dashboard import DATA, _create, _ended

    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "batchrun.toml"
    config.write_text('[endpoints.simulator.limits."*"]\nrpm = 6000\n')
    with running_server(db_url, server_env(home), config=config) as (base, _):
        batch_id = _create(base, KEY_A, [request_line(f"r{i}") for i in range(4)])
        _ended(base, KEY_A, batch_id)
        body = httpx.get(f"{base}{DATA}/{batch_id}", headers={"x-api-key": KEY_A}).json()

    assert body["batch"]["limits_recorded"] is True
    assert body["batch"]["limits_run"]["run_id"] == body["runs"][0]["run_id"]
    (run,) = body["runs"]
    assert run["keys"] == [{"endpoint": "simulator", "model": "claude-sonnet-4-5"}]
    assert [(item["dimension"], item["configured"], item["limit"]) for item in run["limits"]] == [
        ("rpm", 6000, 6000)
    ]
    (limit,) = body["limits"]
    assert (limit["dimension"], limit["flag"], limit["limit"]) == ("rpm", None, 6000)
