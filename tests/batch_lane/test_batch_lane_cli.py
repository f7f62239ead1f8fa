"""The batch lane from the CLI, against the simulator's Message Batches API on a socket:
half the cost, the same export, expired requests finished in real time, cancel, cron runs,
and creates whose answer was lost reconciled without paying twice."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from batchrun.store.store import Store
from tests.cli.test_run_endpoints import gateway, invoke
from tests.conftest import cli_env, jsonl, request_line


@pytest.fixture
def cli(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def lines(count: int) -> list[dict[str, object]]:
    return [request_line(f"r{i}", f"question number {i}") for i in range(count)]


def submit(cli: CliRunner, tmp_path: Path, *args: str, count: int = 60) -> str:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines(count)))
    result = invoke(cli, "submit", str(path), "--endpoint", "sim", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def configure(tmp_path: Path, url: str, **extra: object) -> None:
    (tmp_path / "batchrun.toml").write_text(gateway("sim", url, batch_api="anthropic", **extra))


def status(cli: CliRunner, batch_id: str) -> dict[str, object]:
    return dict(json.loads(invoke(cli, "status", batch_id, "--json").stdout))


def flat(cli: CliRunner, batch_id: str) -> list[dict[str, object]]:
    out = invoke(cli, "results", batch_id, "--format", "flat", "--partial").stdout
    return [json.loads(line) for line in out.splitlines()]


def test_the_batch_lane_costs_half_and_exports_what_real_time_does(
    cli: CliRunner, tmp_path: Path
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.5))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        in_batch = submit(cli, tmp_path, "--lane", "batch")
        ran = invoke(cli, "run", in_batch, "--poll-interval", "0.2s", "--progress-interval", "1")
        assert ran.exit_code == 0, ran.output
        assert simulator.stats.received == 0, "nothing goes through the Messages API"
        in_real_time = submit(cli, tmp_path)
        assert invoke(cli, "run", in_real_time).exit_code == 0
        batch_status, realtime_status = status(cli, in_batch), status(cli, in_real_time)
        batch_export = invoke(cli, "results", in_batch).stdout.splitlines()
        realtime_export = invoke(cli, "results", in_real_time).stdout.splitlines()
        shown = invoke(cli, "status", in_batch).stdout

    assert simulator.stats.batches_created == 1
    assert batch_status["request_counts"]["succeeded"] == 60  # type: ignore[index]
    assert batch_status["cost_usd"] == pytest.approx(realtime_status["cost_usd"] * 0.5)  # type: ignore[operator]
    assert batch_status["cost_usd_by_lane"] == {"batch": batch_status["cost_usd"]}
    assert batch_status["saved_usd"] == pytest.approx(batch_status["cost_usd"])
    assert batch_status["lane"] == "batch"
    assert [p["state"] for p in batch_status["provider_batches"]] == ["imported"]  # type: ignore[union-attr]
    assert "provider batch" in shown and "saved" in shown
    # Same lines in the same order with the same content; only message ids differ.
    for ours, theirs in zip(batch_export, realtime_export, strict=True):
        a, b = json.loads(ours), json.loads(theirs)
        assert a["custom_id"] == b["custom_id"]
        assert a["result"]["message"]["content"] == b["result"]["message"]["content"]
        usage_a, usage_b = a["result"]["message"]["usage"], b["result"]["message"]["usage"]
        assert usage_a.pop("service_tier") == "batch" and usage_b.pop("service_tier") == "standard"
        assert usage_a == usage_b
    # Each request was billed once across both batches' lanes... per batch: twice in total.
    assert simulator.stats.billed_total == 120


def test_requests_the_provider_expires_are_finished_in_real_time(
    cli: CliRunner, tmp_path: Path
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.3, batch_expired_rate=0.25))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, "--lane", "batch", count=80)
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        records = flat(cli, batch_id)

    assert ran.exit_code == 0, ran.output
    assert Counter(r["status"] for r in records) == {"succeeded": 80}
    lanes = Counter(r["lane"] for r in records)
    assert lanes["realtime"] == simulator.stats.received > 0
    assert lanes["batch"] == 80 - simulator.stats.received
    assert simulator.stats.paid_twice == 0
    assert simulator.stats.billed_total == 80


def test_a_cron_run_picks_up_polling_where_the_last_one_stopped(
    cli: CliRunner, tmp_path: Path
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=3.0))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, "--lane", "batch")
        first = invoke(cli, "run", batch_id, "--poll-interval", "0.2s", "--max-runtime", "1s")
        between = status(cli, batch_id)
        second = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        after = status(cli, batch_id)

    assert first.exit_code == 5, first.output  # stopped by the time limit
    assert between["processing_status"] == "in_progress"
    assert [p["state"] for p in between["provider_batches"]] == ["created"]  # type: ignore[union-attr]
    assert second.exit_code == 0, second.output
    assert after["request_counts"]["succeeded"] == 60  # type: ignore[index]
    assert simulator.stats.batches_created == 1, "the second run created nothing new"
    assert simulator.stats.paid_twice == 0


def test_cancel_cancels_the_provider_batch_and_keeps_what_it_finished(
    cli: CliRunner, tmp_path: Path
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=4.0, batch_cancel_s=0.2))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, "--lane", "batch")
        invoke(cli, "run", batch_id, "--poll-interval", "0.2s", "--max-runtime", "2s")
        canceled = invoke(cli, "cancel", batch_id)
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        final = status(cli, batch_id)

    assert canceled.exit_code == 0, canceled.output
    assert "canceled at the provider" in canceled.stderr
    assert simulator.stats.batch_cancels == 1
    assert ran.exit_code in (0, 7), ran.output
    counts = final["request_counts"]
    assert final["processing_status"] == "ended"
    assert counts["succeeded"] + counts["canceled"] == 60  # type: ignore[index]
    assert counts["succeeded"] > 0 and counts["canceled"] > 0  # type: ignore[index]
    assert simulator.stats.received == 0, "nothing was sent again in real time"


def _backdate_intents(db_url: str, hours: float) -> None:
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE provider_batches SET intent_at = :t WHERE state = 'intent'"),
            {"t": datetime.now(UTC) - timedelta(hours=hours)},
        )
    engine.dispose()


def _intent(db_url: str, batch_id: str) -> list[bytes]:
    """What a run killed between its intent and its create leaves: an intent row holding
    the batch's requests; returns their body lines."""
    store = Store.open(db_url)
    try:
        intent = store.provider_batches.take(
            batch_id=batch_id,
            endpoint="sim",
            max_requests=100_000,
            max_bytes=10**9,
            now=datetime.now(UTC),
        )
    finally:
        store.close()
    assert intent is not None
    return intent.lines


def test_a_create_whose_answer_was_lost_is_adopted_not_repeated(
    cli: CliRunner, tmp_path: Path, db_url: str
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.2))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, "--lane", "batch", count=30)
        body = b'{"requests":[' + b",".join(_intent(db_url, batch_id)) + b"]}"
        # The create reached the provider; the answer never came back.
        made = httpx.post(f"{url}/v1/messages/batches", content=body, timeout=10)
        assert made.status_code == 200
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        final = status(cli, batch_id)

    assert ran.exit_code == 0, ran.output
    assert "an interrupted create had made provider batch" in ran.stderr
    assert simulator.stats.batches_created == 1
    assert final["request_counts"]["succeeded"] == 30  # type: ignore[index]
    assert simulator.stats.paid_twice == 0 and simulator.stats.received == 0


def test_a_create_that_never_happened_is_made_once_the_grace_has_passed(
    cli: CliRunner, tmp_path: Path, db_url: str
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.2))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, "--lane", "batch", count=30)
        _intent(db_url, batch_id)
        _backdate_intents(db_url, hours=1)
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        final = status(cli, batch_id)

    assert ran.exit_code == 0, ran.output
    states = sorted(p["state"] for p in final["provider_batches"])  # type: ignore[union-attr]
    assert states == ["imported", "not_created"]
    assert final["request_counts"]["succeeded"] == 30  # type: ignore[index]
    assert simulator.stats.batches_created == 1 and simulator.stats.paid_twice == 0


def test_two_candidate_batches_are_ambiguous_and_nothing_is_sent_again(
    cli: CliRunner, tmp_path: Path, db_url: str
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.2))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, "--lane", "batch", count=10)
        body = b'{"requests":[' + b",".join(_intent(db_url, batch_id)) + b"]}"
        for _ in range(2):
            httpx.post(f"{url}/v1/messages/batches", content=body, timeout=10)
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        final = status(cli, batch_id)
        shown = invoke(cli, "status", batch_id).stdout
        listed = invoke(cli, "lanes", batch_id)
        chosen = listed.stdout.split("will not guess")[0].split("(")[-1].split(",")[0]
        row = listed.stdout.split()[0]
        settled = invoke(cli, "lanes", batch_id, "--adopt", f"{row}={chosen}")
        again = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        after = status(cli, batch_id)

    assert ran.exit_code == 4, ran.output  # paused: a person must decide
    assert "will not guess" in ran.stderr
    assert final["request_counts"]["processing"] == 10  # type: ignore[index]
    assert "ambiguous" in shown
    assert settled.exit_code == 0, settled.output
    assert f"is provider batch {chosen}" in settled.stderr
    assert again.exit_code == 0, again.output
    assert after["request_counts"]["succeeded"] == 10  # type: ignore[index]
    assert simulator.stats.received == 0 and simulator.stats.batches_created == 2


def test_lanes_refuses_to_settle_what_is_not_in_doubt(cli: CliRunner, tmp_path: Path) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.1))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, "--lane", "batch", count=5)
        invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        refused = invoke(cli, "lanes", batch_id, "--not-created", "1")
        unknown = invoke(cli, "lanes", batch_id, "--not-created", "99")
        malformed = invoke(cli, "lanes", batch_id, "--adopt", "x")

    assert refused.exit_code != 0 and "is imported" in refused.stderr
    assert unknown.exit_code != 0 and "has no provider-batch record 99" in unknown.stderr
    assert malformed.exit_code != 0 and "ROW=PROVIDER_ID" in malformed.output
    for result in (refused, unknown, malformed):
        assert "Traceback" not in result.output


def test_the_lane_needs_an_endpoint_with_a_batch_api(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "batchrun.toml").write_text(gateway("sim", "http://127.0.0.1:9"))
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines(2)))

    result = invoke(cli, "submit", str(path), "--endpoint", "sim", "--lane", "batch")

    assert result.exit_code != 0
    assert "has no batch API" in result.stderr and 'batch_api = "anthropic"' in result.stderr
    assert "Traceback" not in result.output


def test_auto_uses_the_batch_lane_when_the_deadline_is_far_and_real_time_when_near(
    cli: CliRunner, tmp_path: Path
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.2))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url, batch_typical_s=3600)
        far = submit(cli, tmp_path, "--lane", "auto", "--expires-in", "24h", count=20)
        ran_far = invoke(cli, "run", far, "--poll-interval", "0.2s")
        sent_far, created_far = simulator.stats.received, simulator.stats.batches_created
        near = submit(cli, tmp_path, "--lane", "auto", "--expires-in", "60m", count=20)
        ran_near = invoke(cli, "run", near, "--poll-interval", "0.2s")
        far_status, near_status = status(cli, far), status(cli, near)

    assert ran_far.exit_code == 0 and ran_near.exit_code == 0, ran_far.output + ran_near.output
    assert "auto lane: 20 queued requests go to the batch lane until" in ran_far.stderr
    assert sent_far == 0 and created_far == 1
    assert far_status["cost_usd_by_lane"].keys() == {"batch"}  # type: ignore[attr-defined]
    # An hour leaves no room for a typical hour in the batch lane plus real time after it.
    assert simulator.stats.received == 20 and simulator.stats.batches_created == 1
    assert near_status["cost_usd_by_lane"].keys() == {"realtime"}  # type: ignore[attr-defined]


def test_run_lane_moves_a_real_time_batch_to_the_batch_lane(cli: CliRunner, tmp_path: Path) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.2))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, count=20)
        ran = invoke(cli, "run", batch_id, "--lane", "batch", "--poll-interval", "0.2s")
        final = status(cli, batch_id)

    assert ran.exit_code == 0, ran.output
    assert final["lane"] == "batch" and simulator.stats.received == 0
    assert final["request_counts"]["succeeded"] == 20  # type: ignore[index]


def test_the_aimlapi_style_batch_api_is_driven_by_its_own_paths(
    cli: CliRunner, tmp_path: Path
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.2))
    with running_simulator(app=simulator) as url:
        (tmp_path / "batchrun.toml").write_text(gateway("sim", url, batch_api="aimlapi"))
        batch_id = submit(cli, tmp_path, "--lane", "batch", count=20)
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        final = status(cli, batch_id)

    assert ran.exit_code == 0, ran.output
    assert final["request_counts"]["succeeded"] == 20  # type: ignore[index]
    assert simulator.stats.batches_created == 1 and simulator.stats.received == 0
    assert final["cost_usd_by_lane"].keys() == {"batch"}  # type: ignore[attr-defined]


def test_estimate_shows_the_cost_and_time_of_each_lane(cli: CliRunner, tmp_path: Path) -> None:
    configure(tmp_path, "http://127.0.0.1:9", batch_discount=0.4, batch_typical_s=1800)
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines(10)))

    shown = invoke(cli, "estimate", str(path), "--endpoint", "sim", "--lane", "auto", "--rpm", "60")
    data = json.loads(
        invoke(cli, "estimate", str(path), "--endpoint", "sim", "--lane", "batch", "--json").stdout
    )

    assert shown.exit_code == 0, shown.output
    assert "batch lane" in shown.stdout and "40% of the price" in shown.stdout
    assert "batch by --lane auto" in shown.stdout
    realtime, batch = data["lanes"]["realtime"], data["lanes"]["batch"]
    assert batch["expected_cost_usd"] == pytest.approx(realtime["expected_cost_usd"] * 0.4)
    assert batch["typical_minutes"] == 30 and data["chosen_lane"] == "batch"


@pytest.mark.parametrize(
    ("table", "complaint"),
    [
        ('batch_path = "/b"', 'has no batch API; set batch_api = "anthropic"'),
        ('batch_api = "openai"', "batch_api"),
        ('batch_api = "anthropic"\nbatch_discount = 2', "batch_discount"),
        ('batch_api = "anthropic"\nbatch_max_requests = 0', "batch_max_requests"),
    ],
)
def test_bad_batch_settings_are_named_with_the_file_and_key(
    cli: CliRunner, tmp_path: Path, table: str, complaint: str
) -> None:
    (tmp_path / "batchrun.toml").write_text(
        f'[endpoints.gw]\nbase_url = "http://127.0.0.1:9"\nauth = "none"\n{table}\n'
    )

    result = invoke(cli, "endpoints")

    assert result.exit_code != 0
    assert "batchrun.toml" in result.stderr and complaint in result.stderr
    assert "Traceback" not in result.output


def test_a_create_too_large_for_the_provider_is_split(cli: CliRunner, tmp_path: Path) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.1, batch_max_bytes=12_000))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, "--lane", "batch", count=150)
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.1s")
        final = status(cli, batch_id)

    assert ran.exit_code == 0, ran.output
    assert final["request_counts"]["succeeded"] == 150  # type: ignore[index]
    states = Counter(p["state"] for p in final["provider_batches"])  # type: ignore[union-attr]
    assert states["imported"] >= 2 and states["not_created"] >= 1
    assert simulator.stats.received == 0 and simulator.stats.paid_twice == 0


def test_what_the_provider_expires_in_a_canceled_batch_is_not_sent_again(
    cli: CliRunner, tmp_path: Path
) -> None:
    simulator = create_app(
        SimulatorConfig(batch_processing_s=3.0, batch_cancel_s=3.0, batch_expired_rate=0.5)
    )
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, "--lane", "batch", count=40)
        invoke(cli, "run", batch_id, "--poll-interval", "0.2s", "--max-runtime", "1s")
        invoke(cli, "cancel", batch_id)
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        final = status(cli, batch_id)

    assert ran.exit_code in (0, 7), ran.output
    assert final["processing_status"] == "ended"
    assert simulator.stats.received == 0, "a canceled batch sends nothing in real time"
    counts = final["request_counts"]
    assert sum(counts.values()) == 40  # type: ignore[union-attr]


def test_duplicates_in_the_batch_lane_are_sent_once_and_share_the_answer(
    cli: CliRunner, tmp_path: Path
) -> None:
    simulator = create_app(SimulatorConfig(batch_processing_s=0.2))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        path = tmp_path / "requests.jsonl"
        duplicated = [request_line(f"r{i}", f"question {i % 5}") for i in range(20)]
        path.write_bytes(jsonl(duplicated))
        batch_id = invoke(
            cli, "submit", str(path), "--endpoint", "sim", "--lane", "batch", "--reuse"
        ).stdout.strip()
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        records = flat(cli, batch_id)

    assert ran.exit_code == 0, ran.output
    assert Counter(r["status"] for r in records) == {"succeeded": 20}
    assert simulator.stats.batch_requests_received == 5 and simulator.stats.received == 0
    by_text = Counter(r["text"] for r in records)
    assert len(by_text) == 5 and set(by_text.values()) == {4}


def test_the_batch_lane_keeps_the_budget(cli: CliRunner, tmp_path: Path) -> None:
    # Worst case of one request here: (about 8 input + 256 output tokens) at Sonnet 4.5's
    # price, halved: about $0.0019; answers use 40 output tokens, about $0.0003.
    simulator = create_app(SimulatorConfig(batch_processing_s=0.1))
    with running_simulator(app=simulator) as url:
        configure(tmp_path, url)
        batch_id = submit(cli, tmp_path, "--lane", "batch", "--max-cost", "0.01", count=60)
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.1s")
        final = status(cli, batch_id)

    assert ran.exit_code == 4, ran.output
    assert "max-cost reached" in ran.stderr
    assert final["cost_usd"] <= 0.01  # type: ignore[operator]
    succeeded = final["request_counts"]["succeeded"]  # type: ignore[index]
    assert 5 < succeeded < 60
    assert len(final["provider_batches"]) >= 2  # type: ignore[arg-type]
    assert simulator.stats.received == 0 and simulator.stats.paid_twice == 0
