"""The batch lane's prompt-cache groups and their TTL (``--cache-ttl auto|keep``), from the
CLI against the simulator on a socket whose provider starts a batch well past the
(scaled) 5-minute TTL and runs it in parallel: the cold batch reads nothing from the cache,
the 1-hour TTL makes every follower read the leader's write, and ``keep`` sends the requests
exactly as written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from batchrun.simulator import SimulatorApp, SimulatorConfig, running_simulator
from batchrun.simulator.asgi import Receive, Scope, Send
from batchrun.simulator.stats import request_fingerprint
from tests.batch_lane.test_batch_lane_cli import configure, flat, status
from tests.cli.test_run_endpoints import invoke
from tests.conftest import cli_env, jsonl, request_line

MODEL = "claude-sonnet-4-5"
# 5,600 characters: 1,400 tokens by the simulator's count (over the 1,024 minimum).
SYSTEM = ("You answer questions about the catalogue, briefly. " * 112)[:5600]
PREFIX_TOKENS = len(SYSTEM) // 4
# Scaled lifetimes: 5 minutes → 0.9 s, 1 hour → 10.8 s; the provider starts a batch 1.5 s
# after its creation and runs its requests in one wave. A follower is read at least 1.5 s
# after its leader's write, so the 5-minute entry has always gone by then, whatever the
# machine's load; the hour leaves 9 s for a loaded machine between the leader's answer and
# the provider batch's creation (at 3.6 s a loaded CI machine once missed it).
TTL_SCALE = 0.003


class RecordingSimulator(SimulatorApp):
    """The simulator, keeping the body of every POST it receives (path, JSON)."""

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.posted: list[tuple[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        self.posted.append((scope["path"], json.loads(body) if body else None))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await super().__call__(scope, replay, send)

    def sent_params(self) -> dict[str, Any]:
        """The params sent per custom_id: provider batches' requests; the Messages API's
        bodies under the key ``realtime:N`` in the order received."""
        sent: dict[str, Any] = {}
        realtime = 0
        for path, body in self.posted:
            if path.endswith("/messages/batches"):
                for request in body["requests"]:
                    sent[request["custom_id"]] = request["params"]
            elif path.endswith("/messages"):
                sent[f"realtime:{realtime}"] = body
                realtime += 1
        return sent


def simulator() -> RecordingSimulator:
    return RecordingSimulator(
        SimulatorConfig(
            batch_start_s=1.5,
            batch_processing_s=0.2,
            batch_concurrency=10_000,
            cache_ttl_scale=TTL_SCALE,
        )
    )


def group_lines(count: int, prompts: int = 1) -> list[dict[str, Any]]:
    """``count`` requests; request ``i`` shares system prompt ``i % prompts``, marked."""
    return [
        request_line(
            f"r{i}",
            f"question number {i}",
            model=MODEL,
            max_tokens=20,
            system=[
                {
                    "type": "text",
                    "text": f"{i % prompts:03d} {SYSTEM}"[: len(SYSTEM)],
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        )
        for i in range(count)
    ]


@pytest.fixture
def cli(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def run_batch_lane(
    cli: CliRunner,
    tmp_path: Path,
    app: RecordingSimulator,
    lines: list[dict[str, Any]],
    *args: str,
    endpoint: dict[str, object] | None = None,
    lane: str = "batch",
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """Submit ``lines`` on ``lane`` (``args``: more submit options; ``endpoint``: more keys
    of the endpoint's table) and run them to the end; (batch id, flat export, status)."""
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines))
    with running_simulator(app=app) as url:
        configure(tmp_path, url, **(endpoint or {}))
        submitted = invoke(cli, "submit", str(path), "--endpoint", "sim", "--lane", lane, *args)
        assert submitted.exit_code == 0, submitted.output
        batch_id = submitted.stdout.strip()
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        assert ran.exit_code == 0, ran.output
        if lane == "auto":
            assert "queued requests go to the batch lane until" in ran.stderr
        return batch_id, flat(cli, batch_id), status(cli, batch_id)


def prefix_tokens_read_share(records: list[dict[str, Any]], lane: str) -> float:
    mine = [r for r in records if r["lane"] == lane]
    read = sum(r["cache_read_input_tokens"] for r in mine)
    return read / (PREFIX_TOKENS * len(mine))


def test_the_prompt_is_the_size_the_tests_assume() -> None:
    assert len(SYSTEM) == 4 * 1400


def test_a_cold_batch_reads_nothing_and_keep_sends_every_body_as_written(
    cli: CliRunner, tmp_path: Path
) -> None:
    app = simulator()
    lines = group_lines(60)
    _, records, shown = run_batch_lane(cli, tmp_path, app, lines, "--cache-ttl", "keep")

    assert {r["status"] for r in records} == {"succeeded"} and len(records) == 60
    assert prefix_tokens_read_share(records, "batch") == 0.0
    assert {r["cache_creation_input_tokens"] for r in records} == {PREFIX_TOKENS}
    # Nothing about the requests changed: the bodies sent are the file's params.
    sent = app.sent_params()
    by_id = {line["custom_id"]: line["params"] for line in lines}
    batch_ids = [key for key in sent if not key.startswith("realtime:")]
    assert len(batch_ids) == 59 and all(sent[key] == by_id[key] for key in batch_ids)
    leader = sent["realtime:0"]
    assert leader == by_id["r0"] and len(sent) == 60
    assert shown["request_counts"]["succeeded"] == 60


def test_the_one_hour_ttl_makes_every_follower_read_the_leaders_write(
    cli: CliRunner, tmp_path: Path
) -> None:
    app = simulator()
    lines = group_lines(60)
    _, records, _ = run_batch_lane(cli, tmp_path, app, lines)

    assert {r["status"] for r in records} == {"succeeded"} and len(records) == 60
    assert prefix_tokens_read_share(records, "batch") == 1.0
    assert sum(r["cache_creation_input_tokens"] for r in records) == PREFIX_TOKENS
    sent = app.sent_params()
    one_hour = {"type": "ephemeral", "ttl": "1h"}
    assert {json.dumps(p["system"][0]["cache_control"]) for p in sent.values()} == {
        json.dumps(one_hour)
    }
    # Only the marker changed.
    by_id = {line["custom_id"]: line["params"] for line in lines}
    for custom_id, params in sent.items():
        original = by_id["r0" if custom_id.startswith("realtime:") else custom_id]
        original["system"][0]["cache_control"] = one_hour
        assert params == original
    assert app.stats.paid_twice == 0 and app.stats.billed_total == 60


def test_estimate_shows_the_batch_lanes_cost_under_each_cache_ttl_policy(
    cli: CliRunner, tmp_path: Path
) -> None:
    configure(tmp_path, "http://127.0.0.1:9")
    path = tmp_path / "requests.jsonl"
    # Two groups of 10 requests (prompts 0 and 1), and a request alone with prompt 2.
    lines = group_lines(20, prompts=2) + [
        {**line, "custom_id": "alone"} for line in group_lines(3, prompts=3)[2:]
    ]
    path.write_bytes(jsonl(lines))

    shown = invoke(cli, "estimate", str(path), "--endpoint", "sim", "--lane", "batch")
    data = json.loads(
        invoke(cli, "estimate", str(path), "--endpoint", "sim", "--lane", "batch", "--json").stdout
    )

    assert shown.exit_code == 0, shown.output
    assert "2 prompt-cache groups (20 requests" in shown.stdout
    assert "--cache-ttl auto" in shown.stdout and "with keep" in shown.stdout
    batch = data["lanes"]["batch"]
    groups = batch["cache_ttl"]
    # batchrun's estimate of a 5,600-character prompt: 5,600 / 3.5 = 1,600 tokens.
    prefix = 1600
    assert (groups["groups"], groups["requests"], groups["prefix_tokens"]) == (2, 20, 20 * prefix)
    # claude-sonnet-4-5: input $3, 5-minute write $3.75, read $0.30 per million; 1-hour write
    # 2 × input = $6; the batch lane at 50 %. Per group of 10: the lane's plain figure counts
    # the prefix 10 × $3 × 0.5; keep: $3.75 + 9 × $3.75 × 0.5; auto: $6 + 9 × $0.30 × 0.5.
    plain = 2 * prefix * 10 * 3 * 0.5 / 1e6
    keep = 2 * prefix * (3.75 + 9 * 3.75 * 0.5) / 1e6
    auto = 2 * prefix * (6 + 9 * 0.3 * 0.5) / 1e6
    lane = batch["expected_cost_usd"]
    assert groups["expected_cost_usd"]["keep"] == pytest.approx(lane - plain + keep)
    assert groups["expected_cost_usd"]["auto"] == pytest.approx(lane - plain + auto)
    assert groups["expected_cost_usd"]["auto"] < groups["expected_cost_usd"]["keep"]


def stored_marker(db_url: str, batch_id: str) -> set[str]:
    """The distinct ``cache_control`` markers of a batch's stored requests."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT params FROM requests WHERE batch_id = :b"), {"b": batch_id}
            ).all()
    finally:
        engine.dispose()
    return {json.dumps(json.loads(p)["system"][0]["cache_control"]) for (p,) in found}


@pytest.mark.parametrize("policy", ["auto", "keep"])
def test_the_auto_lane_applies_the_policy_when_it_chooses_the_batch_lane(
    cli: CliRunner, tmp_path: Path, policy: str
) -> None:
    # A far deadline against a typical hour: auto chooses the batch lane at run time, after
    # the bodies were stored as written.
    app = simulator()
    lines = group_lines(60)
    _, records, _ = run_batch_lane(
        cli,
        tmp_path,
        app,
        lines,
        "--expires-in",
        "24h",
        "--cache-ttl",
        policy,
        endpoint={"batch_typical_s": 3600},
        lane="auto",
    )

    assert {r["status"] for r in records} == {"succeeded"} and len(records) == 60
    assert [r["lane"] for r in records].count("realtime") == 1
    sent = app.sent_params()
    assert len(sent) == 60 and app.stats.paid_twice == 0 and app.stats.billed_total == 60
    by_id = {line["custom_id"]: line["params"] for line in lines}
    if policy == "keep":
        # Nothing about the requests changed: the cold batch.
        assert all(
            params == by_id["r0" if key.startswith("realtime:") else key]
            for key, params in sent.items()
        )
        assert prefix_tokens_read_share(records, "batch") == 0.0
        return
    # As with --lane batch: only the markers changed, to "1h", the leader's included, and
    # every follower read the leader's write.
    one_hour = {"type": "ephemeral", "ttl": "1h"}
    for key, params in sent.items():
        original = by_id["r0" if key.startswith("realtime:") else key]
        original["system"][0]["cache_control"] = one_hour
        assert params == original
    assert prefix_tokens_read_share(records, "batch") == 1.0


def test_the_config_files_cache_ttl_is_the_default_and_the_flag_wins(
    cli: CliRunner, tmp_path: Path, db_url: str
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(group_lines(5)))
    as_written = {json.dumps({"type": "ephemeral"})}
    one_hour = {json.dumps({"type": "ephemeral", "ttl": "1h"})}

    def submit(*args: str) -> str:
        result = invoke(cli, "submit", str(path), "--endpoint", "sim", "--lane", "batch", *args)
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    configure(tmp_path, "http://127.0.0.1:9")
    assert stored_marker(db_url, submit()) == one_hour
    config = tmp_path / "batchrun.toml"
    config.write_text('cache_ttl = "keep"\n' + config.read_text())
    assert stored_marker(db_url, submit()) == as_written
    assert stored_marker(db_url, submit("--cache-ttl", "auto")) == one_hour

    refused = invoke(cli, "submit", str(path), "--endpoint", "sim", "--cache-ttl", "1h")
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "unknown cache TTL policy '1h'; use one of auto, keep" in refused.output
    config.write_text(config.read_text().replace('"keep"', '"never"'))
    bad = invoke(cli, "submit", str(path), "--endpoint", "sim")
    assert bad.exit_code != 0 and "cache_ttl" in bad.output


# -- issue 29's "done when", with TTLs scaled down ------------------------------------------

# claude-sonnet-4-5 per million tokens: input $3, 5-minute write $3.75, read $0.30; a 1-hour
# write is 2 × input. The batch lane bills 50 %.
INPUT, WRITE_5M, WRITE_1H, READ, DISCOUNT = 3.0, 3.75, 6.0, 0.3, 0.5


def prefix_cost_usd(requests: int, *, one_hour: bool) -> float:
    """The docs' formula ("Paying less", the batch lane's cache groups) for one group."""
    if one_hour:
        return PREFIX_TOKENS * (WRITE_1H + (requests - 1) * READ * DISCOUNT) / 1e6
    return PREFIX_TOKENS * (WRITE_5M + (requests - 1) * WRITE_5M * DISCOUNT) / 1e6


def total_cost_usd(shown: dict[str, Any]) -> float:
    """What status says the batch cost: its results, and the overhead of keeping its groups
    warm (the refreshes, and the leaders' 1-hour writes' premium), when there was any."""
    overhead = shown["cache_overhead"]
    return float(shown["cost_usd"]) + (0.0 if overhead is None else overhead["cost_usd"])


def test_400_requests_sharing_a_prompt_read_it_from_the_cache_in_the_batch_lane(
    cli: CliRunner, tmp_path: Path
) -> None:
    lines = group_lines(400)
    cold_app, warm_app = simulator(), simulator()
    _, cold, cold_shown = run_batch_lane(cli, tmp_path, cold_app, lines, "--cache-ttl", "keep")
    _, warm, shown = run_batch_lane(cli, tmp_path, warm_app, lines)

    for app, records in ((cold_app, cold), (warm_app, warm)):
        assert len(records) == 400 and {r["status"] for r in records} == {"succeeded"}
        assert app.stats.billed_total == 400 and app.stats.paid_twice == 0
        assert [r["lane"] for r in records].count("realtime") == 1
    assert prefix_tokens_read_share(cold, "batch") == 0.0
    assert prefix_tokens_read_share(warm, "batch") >= 0.95
    assert shown["cache_hit_rate"] >= 0.99
    cold_usd = total_cost_usd(cold_shown)
    warm_usd = total_cost_usd(shown)
    # The provider ran within the hour: no refresh was needed; the leader's result prices
    # its 1-hour write (2 × input), the priming says what that cost beyond a 5-minute one.
    assert cold_shown["cache_overhead"] is None
    assert shown["cache_overhead"]["requests"] == 0
    priming = PREFIX_TOKENS * (WRITE_1H - WRITE_5M) / 1e6
    assert shown["cache_overhead"]["priming_cost_usd"] == pytest.approx(priming)
    # The rest of each request (question, output) costs the same in both runs, so the
    # difference is the formula's, for one group of 400.
    saved = prefix_cost_usd(400, one_hour=False) - prefix_cost_usd(400, one_hour=True)
    assert cold_usd - warm_usd == pytest.approx(saved, rel=1e-6)
    assert warm_usd < cold_usd


def test_20_prompts_of_50_requests_read_their_prompts_from_the_cache(
    cli: CliRunner, tmp_path: Path
) -> None:
    app = simulator()
    _, records, _ = run_batch_lane(cli, tmp_path, app, group_lines(1000, prompts=20))

    assert len(records) == 1000 and {r["status"] for r in records} == {"succeeded"}
    assert [r["lane"] for r in records].count("realtime") == 20
    assert prefix_tokens_read_share(records, "batch") >= 0.95
    assert app.stats.billed_total == 1000 and app.stats.paid_twice == 0


def groups_by_provider_batch(db_url: str, batch_id: str) -> dict[int, set[int]]:
    """The prompt-cache groups (their leader's id) of the followers each provider batch of
    the batch held, by provider batch row id."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT provider_batch, wait_for FROM requests WHERE batch_id = :b "
                    "AND provider_batch IS NOT NULL AND wait_for IS NOT NULL"
                ),
                {"b": batch_id},
            ).all()
    finally:
        engine.dispose()
    held: dict[int, set[int]] = {}
    for provider_batch, leader in found:
        held.setdefault(provider_batch, set()).add(leader)
    return held


def test_a_groups_followers_go_together_into_as_few_provider_batches_as_possible(
    cli: CliRunner, tmp_path: Path, db_url: str
) -> None:
    # 20 prompts × 50 requests, lines interleaved (request i shares prompt i % 20), provider
    # batches of at most 100: in line order every provider batch would hold all 20 groups,
    # and every group's entry would have to live until the last of them ended.
    app = simulator()
    batch_id, records, _ = run_batch_lane(
        cli, tmp_path, app, group_lines(1000, prompts=20), endpoint={"batch_max_requests": 100}
    )

    assert len(records) == 1000 and {r["status"] for r in records} == {"succeeded"}
    held = groups_by_provider_batch(db_url, batch_id)
    assert app.stats.batches_created == len(held) >= 10
    assert max(len(groups) for groups in held.values()) <= 3
    spans: dict[int, int] = {}
    for groups in held.values():
        for leader in groups:
            spans[leader] = spans.get(leader, 0) + 1
    assert len(spans) == 20 and max(spans.values()) <= 2
    assert sum(spans.values()) <= len(spans) + len(held)
    assert prefix_tokens_read_share(records, "batch") >= 0.95
    assert app.stats.billed_total == 1000 and app.stats.paid_twice == 0


# -- kept warm while the provider works past the hour ----------------------------------------

# Here an hour is 7.2 s (a refresh at 80 % of it leaves 1.4 s to spare for a worker that a
# loaded machine starves), and the provider starts a batch 16 s after its creation: past two
# scaled hours.
SLOW_TTL_SCALE = 0.002
SLOW_START_S = 16.0


def slow_simulator() -> RecordingSimulator:
    return RecordingSimulator(
        SimulatorConfig(
            batch_start_s=SLOW_START_S,
            batch_processing_s=0.2,
            batch_concurrency=10_000,
            cache_ttl_scale=SLOW_TTL_SCALE,
            log_size=100_000,
        )
    )


def refreshes_by_prompt(app: RecordingSimulator) -> dict[str, int]:
    """The Messages API requests with max_tokens 1 (the refreshes), by system prompt."""
    found: dict[str, int] = {}
    for path, body in app.posted:
        if path.endswith("/messages") and body["max_tokens"] == 1:
            prompt = body["system"][0]["text"][:3]
            found[prompt] = found.get(prompt, 0) + 1
    return found


@pytest.mark.parametrize("prompts", [1, 20])
def test_groups_are_kept_warm_while_the_provider_works_past_the_hour(
    cli: CliRunner, tmp_path: Path, prompts: int
) -> None:
    app = slow_simulator()
    path = tmp_path / "requests.jsonl"
    lines = group_lines(400 if prompts == 1 else 1000, prompts=prompts)
    path.write_bytes(jsonl(lines))
    with running_simulator(app=app) as url:
        configure(tmp_path, url, batch_cache_ttl_scale=SLOW_TTL_SCALE)
        submitted = invoke(cli, "submit", str(path), "--endpoint", "sim", "--lane", "batch")
        batch_id = submitted.stdout.strip()
        ran = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        assert ran.exit_code == 0, ran.output
        records = flat(cli, batch_id)

    assert len(records) == len(lines) and {r["status"] for r in records} == {"succeeded"}
    refreshes = refreshes_by_prompt(app)
    # Every request billed once; only the refreshes (identical bodies) more than once.
    assert app.stats.billed_total == len(lines) + sum(refreshes.values())
    refresh_bodies = {
        request_fingerprint(body)
        for path, body in app.posted
        if path.endswith("/messages") and body["max_tokens"] == 1
    }
    twice = {fingerprint for fingerprint, n in app.stats.billed_by_fingerprint.items() if n > 1}
    assert twice <= refresh_bodies
    assert prefix_tokens_read_share(records, "batch") >= 0.95
    assert sorted(refreshes) == sorted(f"{i:03d}" for i in range(prompts))
    # At most one refresh per group per TTL period (7.2 s) while its followers waited.
    hour_s = 3600 * SLOW_TTL_SCALE
    for count in refreshes.values():
        assert 1 <= count <= SLOW_START_S / hour_s + 1


def test_status_shows_the_cache_per_lane_and_the_refreshes_overhead(
    cli: CliRunner, tmp_path: Path
) -> None:
    app = slow_simulator()
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(group_lines(40, prompts=2)))
    with running_simulator(app=app) as url:
        configure(tmp_path, url, batch_cache_ttl_scale=SLOW_TTL_SCALE)
        submitted = invoke(cli, "submit", str(path), "--endpoint", "sim", "--lane", "batch")
        batch_id = submitted.stdout.strip()
        assert invoke(cli, "run", batch_id, "--poll-interval", "0.2s").exit_code == 0
        shown = status(cli, batch_id)
        text = invoke(cli, "status", batch_id).stdout
        page = invoke(cli, "report", batch_id, "--output", "-").stdout
        records = flat(cli, batch_id)

    refreshes = [b for p, b in app.posted if p.endswith("/messages") and b["max_tokens"] == 1]
    lanes = shown["cache_by_lane"]
    # Each leader wrote its prompt in real time; the 38 followers read theirs in the batch.
    assert lanes["realtime"]["cache_creation_input_tokens"] == 2 * PREFIX_TOKENS
    assert lanes["batch"]["cache_read_input_tokens"] == 38 * PREFIX_TOKENS
    assert lanes["batch"]["cache_creation_input_tokens"] == 0
    # Reads at $0.30 instead of writes at $3.75 per million, at the batch's 50 %.
    saved = 38 * PREFIX_TOKENS * (WRITE_5M - READ) / 1e6 * DISCOUNT
    assert lanes["batch"]["saved_usd"] == pytest.approx(saved)
    # The flat export has each request's share of it; the leaders saved nothing.
    per_lane = {"batch": 0.0, "realtime": 0.0}
    for record in records:
        per_lane[record["lane"]] += record["cache_saved_usd"]
    assert per_lane == {"batch": pytest.approx(saved), "realtime": 0.0}
    overhead = shown["cache_overhead"]
    assert overhead["requests"] == len(refreshes) >= 2 and overhead["groups"] == 2
    assert overhead["failed"] == 0
    priming = 2 * PREFIX_TOKENS * (WRITE_1H - WRITE_5M) / 1e6
    assert overhead["priming_cost_usd"] == pytest.approx(priming)
    # A refresh reads the prompt and sends the question (list price, real time) and gets
    # one output token.
    question = (len("question number 0") + 3) // 4 + 4  # the simulator's count
    per_refresh = (PREFIX_TOKENS * READ + question * INPUT + 1 * 15.0) / 1e6
    assert overhead["refresh_cost_usd"] == pytest.approx(len(refreshes) * per_refresh)
    # The priming is part of the leaders' results' cost (their usage says 1 hour, priced at
    # the 1-hour price): shown beside the overhead, not added to it again.
    assert overhead["cost_usd"] == pytest.approx(overhead["refresh_cost_usd"])
    leaders = [r for r in records if r["lane"] == "realtime"]
    assert [r["cache_creation_1h_input_tokens"] for r in leaders] == [PREFIX_TOKENS] * 2
    assert float(shown["cost_usd"]) == pytest.approx(sum(r["cost_usd"] for r in records))
    assert "batch cache" in text and "cache refreshes" in text and "overhead" in text
    # The report's summary shows the same rows.
    assert "batch cache" in page and "cache refreshes" in page


def test_a_run_stopped_while_the_provider_works_is_kept_warm_by_the_next_one(
    cli: CliRunner, tmp_path: Path
) -> None:
    app = slow_simulator()
    path = tmp_path / "requests.jsonl"
    lines = group_lines(100)
    path.write_bytes(jsonl(lines))
    with running_simulator(app=app) as url:
        configure(tmp_path, url, batch_cache_ttl_scale=SLOW_TTL_SCALE)
        submitted = invoke(cli, "submit", str(path), "--endpoint", "sim", "--lane", "batch")
        batch_id = submitted.stdout.strip()
        first = invoke(cli, "run", batch_id, "--poll-interval", "0.2s", "--max-runtime", "9s")
        between = status(cli, batch_id)
        second = invoke(cli, "run", batch_id, "--poll-interval", "0.2s")
        records = flat(cli, batch_id)

    assert first.exit_code == 5, first.output  # stopped by the time limit
    assert between["cache_overhead"]["requests"] == 1  # refreshed once, at 80 % of 7.2 s
    assert second.exit_code == 0, second.output
    assert len(records) == 100 and {r["status"] for r in records} == {"succeeded"}
    assert prefix_tokens_read_share(records, "batch") >= 0.95
    # The second run went on from the stored warm time: no refresh beyond one per period.
    (count,) = refreshes_by_prompt(app).values()
    assert 2 <= count <= SLOW_START_S / (3600 * SLOW_TTL_SCALE) + 1
