"""Report: `batchrun report` of a 100,000-request batch, in time and in memory.

The issue's target: a 100,000-request batch reports in <= 10 s with bounded memory.

Each database (a SQLite file; with --postgres also a scratch Postgres database) is seeded
through the store API, as a worker would leave it: requests submitted, claimed and recorded in
chunks of 1,000, answered over 6 simulated hours by the two members of a pool ("eu", "us"),
two models, ~3 % of requests with one or two transient failures (429, 529, 500) before their
answer, ~1 % ending errored, usage with cache reads and writes on some, 2 kB prompts and
~1 kB answer bodies. Beside the big batch, a batch a tenth of its size in the same database.

Figures, each measured on the real CLI (a separate process, peak RSS from GNU time), the
median wall time of --repeat runs:

- `batchrun report BATCH_ID -o FILE`: wall seconds (target <= 10 s), peak RSS, file size;
- as baselines from the same run: `batchrun status BATCH_ID` (wall time; the report also
  reads the status) and `batchrun --version` (peak RSS: the interpreter and the CLI alone);
- the report's peak RSS for the small batch against the big one (bounded: about equal).

Run:  .venv/bin/python bench/report.py                 (SQLite; about 2 minutes)
      .venv/bin/python bench/report.py --postgres      (about 4 minutes: SQLite, then Postgres at
                                                        BATCHRUN_TEST_POSTGRES_URL or
                                                        postgres@127.0.0.1:5432)
      .venv/bin/python bench/report.py --requests 20000   (quicker)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import BATCHRUN, scratch_postgres
from scale import timed

from batchrun.input.ingest import submit_requests
from batchrun.records import ClaimedRequest, FinishedRequest, RetryLater, SendFailure, Usage
from batchrun.store.store import Store

TARGET_REPORT_S = 10.0
CHUNK_REQUESTS = 1_000
HISTORY_S = 6 * 3600
LEASE_S = 7 * 24 * 3600
PROMPT_BYTES = 2_000
ANSWER_TEXT_BYTES = 800  # plus the Message's other fields: ~1 kB a body
MODELS = (("claude-sonnet-4-5", 0.7), ("claude-haiku-4-5", 0.3))
# The pool's members: (name, share of the answers, median latency in seconds).
MEMBERS = (("eu", 0.55, 4.0), ("us", 0.45, 6.0))
POOL = "both"
MEMBER_RPM = 200
RETRIED_SHARE = 0.03
ERRORED_SHARE = 0.01
# Transient failures: (HTTP status, error type, weight).
TRANSIENT = ((429, "rate_limit_error", 6), (529, "overloaded_error", 3), (500, "api_error", 1))
# Final errors: (HTTP status, error type, weight).
FINAL = (
    (400, "invalid_request_error", 4),
    (529, "overloaded_error", 3),
    (429, "rate_limit_error", 1),
    (500, "api_error", 2),
)
# Prompts and answers are made of these words.
SENTENCE = (
    "the quick brown fox jumps over a lazy dog while seven careful assistants summarise "
    "quarterly reports about shipping routes harbour fees and weather along the coast"
)
WORDS = SENTENCE.split()


@dataclass(frozen=True)
class Measured:
    """The figures of one backend."""

    backend: str
    requests: int
    report: Runs
    file_kb: float
    status: Runs
    version: Runs
    small_requests: int
    small_report: Runs
    load_1min: float


def config_text() -> str:
    """The pool of two members the batches were sent through, with limits to draw."""
    tables = "".join(
        f'[endpoints.{name}]\nbase_url = "http://127.0.0.1:9"\nauth = "none"\n'
        f'[endpoints.{name}.limits."*"]\nrpm = {MEMBER_RPM}\notpm = 200000\n'
        for name, _, _ in MEMBERS
    )
    members = ", ".join(f'"{name}"' for name, _, _ in MEMBERS)
    return f"{tables}[pools.{POOL}]\nmembers = [{members}]\n"


def text_of(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def write_requests(path: Path, count: int, rng: random.Random) -> None:
    # A few hundred distinct prompts, each made unique by its number: cheap to write, and
    # the table holds 2 kB a request as a real one would.
    prompts = [text_of(rng, PROMPT_BYTES) for _ in range(256)]
    models = [name for name, _ in MODELS]
    weights = [share for _, share in MODELS]
    with path.open("w") as stream:
        for i in range(count):
            line = {
                "custom_id": f"r{i:06d}",
                "params": {
                    "model": rng.choices(models, weights)[0],
                    "max_tokens": 1024,
                    "system": "You are a careful assistant.",
                    "messages": [{"role": "user", "content": f"{i}: {prompts[i % 256]}"}],
                },
            }
            stream.write(json.dumps(line) + "\n")


def pick(rng: random.Random, table: tuple[tuple[int, str, int], ...]) -> tuple[int, str]:
    status, error_type, _ = rng.choices(table, [weight for *_, weight in table])[0]
    return status, error_type


def latency_ms(rng: random.Random, median_s: float) -> int:
    """Lognormal around the member's median, mostly 1-30 s."""
    return int(min(max(rng.lognormvariate(math.log(median_s * 1000), 0.7), 400), 90_000))


def usage_of(rng: random.Random) -> Usage:
    output = rng.randint(80, 600)
    roll = rng.random()
    if roll < 0.2:  # a cache hit on the shared system prompt and context
        return Usage(rng.randint(60, 200), output, 0, rng.randint(300, 500))
    if roll < 0.25:  # the cache written
        return Usage(rng.randint(60, 200), output, rng.randint(300, 500), 0)
    return Usage(rng.randint(450, 650), output)


def body_of(rng: random.Random, model: str, usage: Usage, stop_reason: str) -> str:
    return json.dumps(
        {
            "id": f"msg_{rng.getrandbits(96):024x}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text_of(rng, ANSWER_TEXT_BYTES)}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
            },
        }
    )


class History:
    """Answers one chunk of claimed requests as a worker would have, in simulated time."""

    def __init__(self, rng: random.Random, start: datetime, count: int) -> None:
        self.rng = rng
        self.start = start
        self.chunk_s = HISTORY_S * CHUNK_REQUESTS / count

    def chunk_start(self, index: int) -> datetime:
        return self.start + timedelta(seconds=index * self.chunk_s)

    def failures(self, claimed: list[ClaimedRequest], at: datetime) -> list[list[SendFailure]]:
        """Per claimed request, the transient failures of its sends before the last."""
        rng = self.rng
        found: list[list[SendFailure]] = []
        for item in claimed:
            if rng.random() >= RETRIED_SHARE:
                found.append([])
                continue
            sends = []
            for attempt in range(rng.choice((1, 1, 2))):
                status, error_type = pick(rng, TRANSIENT)
                member = rng.choice(MEMBERS)[0]
                sent = at + timedelta(seconds=rng.uniform(0, 20) + 25 * attempt)
                took_ms = rng.randint(150, 3_000)
                sends.append(SendFailure(item.batch_id, sent, took_ms, member, status, error_type))
            found.append(sends)
        return found

    def answer(
        self, item: ClaimedRequest, at: datetime, failures: list[SendFailure]
    ) -> FinishedRequest:
        rng = self.rng
        member, _, median_s = rng.choices(MEMBERS, [share for _, share, _ in MEMBERS])[0]
        waited_s = 60.0 if failures else 0.0
        sent = at + timedelta(seconds=waited_s + rng.uniform(0, self.chunk_s - waited_s))
        took_ms = latency_ms(rng, median_s)
        answer = FinishedRequest(
            request_id=item.id,
            batch_id=item.batch_id,
            custom_id=item.custom_id,
            result_type="succeeded",
            attempts=len(failures) + 1,
            completed_at=sent + timedelta(milliseconds=took_ms),
            http_status=200,
            model=item.model,
            latency_ms=took_ms,
            estimated_input_tokens=item.estimated_input_tokens,
            request_ref=f"req_{rng.getrandbits(80):020x}",
            endpoint=member,
            sent_at=sent,
        )
        if rng.random() < ERRORED_SHARE:
            status, error_type = pick(rng, FINAL)
            return replace(
                answer,
                result_type="errored",
                http_status=status,
                error_type=error_type,
                error_message=f"{error_type}: the request could not be completed ({status})",
            )
        usage = usage_of(rng)
        stop_reason = "max_tokens" if rng.random() < 0.05 else "end_turn"
        body = body_of(rng, item.model, usage, stop_reason)
        return replace(answer, stop_reason=stop_reason, usage=usage, body=body)


def seed(store: Store, tmp: Path, count: int, *, start: datetime, rng: random.Random) -> str:
    """A batch of ``count`` requests, submitted at ``start`` and answered over the
    following :data:`HISTORY_S` seconds; returns its id."""
    requests_file = tmp / f"requests-{count}.jsonl"
    write_requests(requests_file, count, rng)
    with requests_file.open("rb") as stream:
        batch_id = submit_requests(
            store, stream, source=requests_file.name, endpoint=POOL, now=start
        )
    requests_file.unlink()
    history = History(rng, start + timedelta(seconds=30), count)
    owner = "bench"
    for index in range(math.ceil(count / CHUNK_REQUESTS)):
        at = history.chunk_start(index)
        claimed = store.leases.claim(
            owner=owner, batch_ids=[batch_id], limit=CHUNK_REQUESTS, now=at, lease_s=LEASE_S
        )
        failures = history.failures(claimed, at)
        for attempt in range(2):
            # Each round of failures, then the failed requests claimed again (the lowest
            # ids queued, so exactly them).
            failing = [
                (item, sends[attempt])
                for item, sends in zip(claimed, failures, strict=True)
                if len(sends) > attempt
            ]
            if not failing:
                break
            store.results.record(
                owner=owner,
                now=at,
                retries=[
                    RetryLater(item.id, at, attempt + 1, f"HTTP {sent.http_status}", sent)
                    for item, sent in failing
                ],
            )
            again = store.leases.claim(
                owner=owner, batch_ids=[batch_id], limit=len(failing), now=at, lease_s=LEASE_S
            )
            assert {item.id for item in again} == {item.id for item, _ in failing}
        finished = [
            history.answer(item, at, sends) for item, sends in zip(claimed, failures, strict=True)
        ]
        store.results.record(
            owner=owner, now=max(item.completed_at for item in finished), finished=finished
        )
    return batch_id


@dataclass(frozen=True)
class Runs:
    """Wall seconds (median, least, most) and the highest peak RSS of a command's runs."""

    median_s: float
    least_s: float
    most_s: float
    peak_mb: float


def runs_of(command: list[str], env: dict[str, str], repeat: int) -> Runs:
    """``command`` run ``repeat`` times, one after the other."""
    runs = [timed(command, env)[:2] for _ in range(repeat)]
    walls = [wall for wall, _ in runs]
    return Runs(statistics.median(walls), min(walls), max(walls), max(mb for _, mb in runs))


def measure(
    backend: str, db_url: str, tmp: Path, count: int, *, repeat: int, rng: random.Random
) -> Measured:
    # Answered from seven hours ago to an hour ago: ended, and far from its expiry.
    start = datetime.now(UTC) - timedelta(seconds=HISTORY_S + 3600)
    small_count = max(1, count // 10)
    seeding = time.perf_counter()
    store = Store.open(db_url)
    try:
        big = seed(store, tmp, count, start=start, rng=rng)
        small = seed(store, tmp, small_count, start=start, rng=rng)
    finally:
        store.close()
    print(
        f"{backend}: seeded {count:,} + {small_count:,} requests through the store in "
        f"{time.perf_counter() - seeding:.0f} s",
        flush=True,
    )
    env = {
        **os.environ,
        "BATCHRUN_DATABASE_URL": db_url,
        "BATCHRUN_CONFIG": str(tmp / "batchrun.toml"),
    }
    timed([BATCHRUN, "status", big], env)  # warm the OS cache and the interpreter's files
    # Other work on the machine slows every figure alike; the load says how busy it was.
    load_1min = os.getloadavg()[0]
    version = runs_of([BATCHRUN, "--version"], env, repeat)
    status = runs_of([BATCHRUN, "status", big], env, repeat)
    page = tmp / f"report-{backend}.html"
    report = runs_of([BATCHRUN, "report", big, "-o", str(page)], env, repeat)
    small_page = tmp / f"report-{backend}-small.html"
    small_report = runs_of([BATCHRUN, "report", small, "-o", str(small_page)], env, repeat)
    return Measured(
        backend=backend,
        requests=count,
        report=report,
        file_kb=page.stat().st_size / 1024,
        status=status,
        version=version,
        small_requests=small_count,
        small_report=small_report,
        load_1min=load_1min,
    )


def databases(tmp: Path, postgres: bool) -> Iterator[tuple[str, AbstractContextManager[str]]]:
    yield "sqlite", nullcontext(f"sqlite:///{tmp / 'report.db'}")
    if postgres:
        yield "postgres", scratch_postgres()


def print_table(rows: list[Measured]) -> None:
    head = (
        f"{'backend':<9} {'requests':>9} {'report s':>9} {'status s':>9} {'ratio':>6} "
        f"{'report RSS MB':>14} {'baseline RSS MB':>16} {'file KB':>8}  target <= 10 s"
    )
    print("\n" + head)
    for row in rows:
        report, status = row.report, row.status
        met = "met" if report.median_s <= TARGET_REPORT_S else "missed"
        print(
            f"{row.backend:<9} {row.requests:>9,} {report.median_s:>9.2f} "
            f"{status.median_s:>9.2f} {report.median_s / status.median_s:>6.2f} "
            f"{report.peak_mb:>14.0f} {row.version.peak_mb:>16.0f} {row.file_kb:>8.0f}  {met}"
        )
    print(
        "\ns: median wall time of the runs; ratio: report ÷ status; baseline RSS: "
        "`batchrun --version` (the interpreter and the CLI)"
    )
    for row in rows:
        report, small = row.report, row.small_report
        print(
            f"{row.backend}: report {report.least_s:.2f}-{report.most_s:.2f} s over the runs "
            f"(load average {row.load_1min:.1f}); report RSS {small.peak_mb:.0f} MB at "
            f"{row.small_requests:,} requests ({small.median_s:.2f} s), {report.peak_mb:.0f} MB "
            f"at {row.requests:,} ({report.peak_mb - small.peak_mb:+.0f} MB); status RSS "
            f"{row.status.peak_mb:.0f} MB; report {report.peak_mb - row.version.peak_mb:+.0f} MB "
            "over --version"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command")
    parser.add_argument(
        "--postgres", action="store_true", help="also measure a scratch Postgres database"
    )
    parser.add_argument("--seed", type=int, default=7, help="of the simulated history")
    args = parser.parse_args()
    rows: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="batchrun-report-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "batchrun.toml").write_text(config_text())
        for backend, database in databases(tmp, args.postgres):
            with database as db_url:
                rng = random.Random(args.seed)
                rows.append(
                    measure(backend, db_url, tmp, args.requests, repeat=args.repeat, rng=rng)
                )
    print_table(rows)


if __name__ == "__main__":
    main()
