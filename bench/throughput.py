"""Dispatch overhead: batchrun against a bare httpx loop, on one simulator with no limits,
and the cost of a limit that never binds.

The simulator runs as its own process on 127.0.0.1 with zero latency and no limits, so the
client side is what is measured. In the same run:

- bare:      an asyncio loop with one httpx client, a semaphore of CONCURRENCY, the same
             request bodies, no database: the baseline issue 8 names;
- bare-pool: the same loop on batchrun's own HTTP layer (httpx clients of 8 connections
             each, see batchrun/transport/http.py), so what is left between it and batchrun
             is the database and the scheduling;
- sqlite:    `batchrun run --no-slow-start` on a SQLite file, results durable
             (synchronous=FULL); without `--no-slow-start` the run would start at 60
             requests a minute, as for any server that announces no limit;
- postgres:  `batchrun run` on a fresh Postgres database, one worker;
- postgres3: three `batchrun run` processes on one Postgres batch together;
- *-limited: the same with `--rpm LIMITED_RPM --tpm LIMITED_TPM`, limits about 100 times
             what one worker reaches here: they never bind, but the limiter is fully engaged,
             so every request takes from the rate bank in the database (issue 27).

Targets (issue 8): sqlite >= 0.8 x bare; postgres >= 0.6 x bare; postgres3 >= 1.5 x postgres.
Targets (issue 27): each limited phase >= 0.9 x the same phase unlimited in requests/s; the
worker's CPU per request (all its processes together) <= 1.5 x the bare-pool loop's.
Each figure is requests per second over the whole run (process start included for batchrun).

A worker's CPU includes its start-up (imports, opening the database, the first claim: about
1 s of CPU, most of it imports), which the bare loops, running inside this already started
script, do not pay. So the script also runs a one-request batch per backend three times and
prints, beside each phase's CPU per request, the same less that start-up (the median
one-request run's CPU per worker process): what each further request costs, the figure the
bare loops measure.

Every phase also prints how busy the machine was (all cores) and the CPU milliseconds each
request cost the client (the loop, or the batchrun workers), the simulator, and everything
else (Postgres, the kernel's share of loopback traffic, other processes). A phase that keeps
every core busy cannot go faster by adding workers.

For each batchrun phase it counts the rate-bank takes per request: one take is one
transaction on the ``rate_keys`` row of a limiter key (granted or refused), counted by a
trigger the script adds to the database after `submit` (``AFTER UPDATE OF admitted_at ON
rate_keys``: only a take's own write of the row sets that column); the trigger adds one
single-row update to each take's transaction. On Postgres it also prints every transaction
the database committed per request (claims, records, leases, rate bank, reads:
``pg_stat_database.xact_commit`` of the phase's scratch database, before and after).

Run:  .venv/bin/python bench/throughput.py                   (10,000 requests)
      .venv/bin/python bench/throughput.py --requests 5000
The limited phases take most of the time while a limit costs what it does now (issue 27):
`--requests 5000` took 13 minutes on 2026-12-07 on the development machine under load (bare
at 94 requests/s instead of about 600), 5 minutes in a less loaded run that day; expect
about twice that for the default, and less on a quiet machine. The default was 20,000
before the limited phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from common import BATCHRUN, Simulator, committed, machine_cpu_s, scratch_postgres
from sqlalchemy import create_engine, text

from batchrun.transport.http import ClientPool, create_http_client

CONCURRENCY = 64
HEADERS = {
    "content-type": "application/json",
    "x-api-key": "sk-bench",
    "anthropic-version": "2023-06-01",
}
# Limits no worker here reaches (about 1,000 requests/s = 60,000 a minute at best, each
# request well under 100 tokens): even the start-up ramp's 20 % of them is 20,000 requests/s.
LIMITED_RPM = 6_000_000
LIMITED_TPM = 1_000_000_000
LIMIT_FLAGS = ("--rpm", str(LIMITED_RPM), "--tpm", str(LIMITED_TPM))
# Targets of issue 27.
MIN_LIMITED_SHARE = 0.9
MAX_CPU_OVER_POOL = 1.5

# The take counter (see the module docstring), per backend.
SQLITE_COUNTER = (
    "CREATE TABLE bench_rate_takes (n INTEGER NOT NULL)",
    "INSERT INTO bench_rate_takes VALUES (0)",
    "CREATE TRIGGER bench_count_take AFTER UPDATE OF admitted_at ON rate_keys "
    "BEGIN UPDATE bench_rate_takes SET n = n + 1; END",
)
POSTGRES_COUNTER = (
    "CREATE TABLE bench_rate_takes (n bigint NOT NULL)",
    "INSERT INTO bench_rate_takes VALUES (0)",
    "CREATE FUNCTION bench_count_take() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN UPDATE bench_rate_takes SET n = n + 1; RETURN NULL; END $$",
    "CREATE TRIGGER bench_count_take AFTER UPDATE OF admitted_at ON rate_keys "
    "FOR EACH ROW EXECUTE FUNCTION bench_count_take()",
)


@dataclass
class Phase:
    seconds: float
    client_cpu_s: float
    simulator_cpu_s: float
    machine_busy_s: float
    machine_total_s: float
    # Batchrun phases only: rate-bank takes, and (Postgres) transactions committed.
    rate_takes: int | None = None
    transactions: int | None = None


def request_lines(count: int) -> list[str]:
    return [
        json.dumps(
            {
                "custom_id": f"r{i:06d}",
                "params": {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": f"Question number {i}, briefly."}],
                },
            }
        )
        for i in range(count)
    ]


def measured(simulator: Simulator, work: Callable[[], float]) -> Phase:
    """Run ``work`` (which returns its client CPU seconds) and take the clocks around it."""
    busy, total = machine_cpu_s()
    simulator_cpu = simulator.cpu_s()
    started = time.perf_counter()
    client_cpu = work()
    seconds = time.perf_counter() - started
    busy_after, total_after = machine_cpu_s()
    return Phase(
        seconds=seconds,
        client_cpu_s=client_cpu,
        simulator_cpu_s=simulator.cpu_s() - simulator_cpu,
        machine_busy_s=busy_after - busy,
        machine_total_s=total_after - total,
    )


async def bare_loop(url: str, bodies: list[bytes], pooled: bool) -> None:
    slots = asyncio.Semaphore(CONCURRENCY)
    http: httpx.AsyncClient | ClientPool
    if pooled:
        http = create_http_client(timeout_s=60, max_connections=CONCURRENCY)
    else:
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        http = httpx.AsyncClient(limits=limits, timeout=60)
    async with http:

        async def one(body: bytes) -> None:
            async with slots:
                for attempt in range(3):
                    try:
                        response = await http.post(
                            f"{url}/v1/messages", content=body, headers=HEADERS
                        )
                    except httpx.TransportError:
                        # A connection the loaded simulator dropped: sent again, as batchrun
                        # would (it happened on a machine at load average 15-25).
                        if attempt == 2:
                            raise
                        continue
                    response.json()
                    return

        await asyncio.gather(*(one(body) for body in bodies))


def bare(url: str, lines: list[str], pooled: bool) -> Callable[[], float]:
    bodies = [json.dumps(json.loads(line)["params"]).encode() for line in lines]

    def work() -> float:
        cpu = time.process_time()
        asyncio.run(bare_loop(url, bodies, pooled))
        return time.process_time() - cpu

    return work


def batchrun_phase(
    simulator: Simulator, db_url: str, requests_file: Path, workers: int, limited: bool
) -> Phase:
    """Submit the requests, add the take counter, then measure ``workers`` `batchrun run`
    processes draining the batch (with the limit flags if ``limited``)."""
    env = {
        **os.environ,
        "BATCHRUN_DATABASE_URL": db_url,
        "ANTHROPIC_BASE_URL": simulator.url,
        "ANTHROPIC_API_KEY": "sk-bench",
    }
    batch_id = subprocess.run(
        [BATCHRUN, "submit", str(requests_file)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    postgres = db_url.startswith("postgresql")
    engine = create_engine(db_url)
    try:
        with engine.begin() as connection:
            for statement in POSTGRES_COUNTER if postgres else SQLITE_COUNTER:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()
    committed_before = committed(db_url) if postgres else 0

    def work() -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        # No limit: the slow start off too (the simulator announces none), so the phase
        # measures dispatch, not the 60-a-minute start growing to the machine's pace.
        args = [BATCHRUN, "run", batch_id, "--max-concurrency", str(CONCURRENCY)]
        args.append("--no-slow-start")
        processes = [
            subprocess.Popen(
                [*args, *(LIMIT_FLAGS if limited else ())],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        codes = [process.wait() for process in processes]
        if any(codes):
            raise RuntimeError(f"batchrun run exited {codes}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    phase = measured(simulator, work)
    if postgres:
        phase.transactions = committed(db_url) - committed_before
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            phase.rate_takes = connection.execute(
                text("SELECT n FROM bench_rate_takes")
            ).scalar_one()
    finally:
        engine.dispose()
    return phase


def startup_cpu_s(simulator: Simulator, db_url: Callable[[str], Any], tmp: Path) -> float:
    """The median CPU of three one-request `batchrun run`s (each on a fresh database from
    ``db_url(name)``, a context manager yielding its URL): a worker's start-up and end."""
    one = tmp / "one.jsonl"
    one.write_text(request_lines(1)[0] + "\n")
    runs = []
    for attempt in range(3):
        with db_url(f"startup-{attempt}") as url:
            runs.append(batchrun_phase(simulator, url, one, 1, False).client_cpu_s)
    return sorted(runs)[1]


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def report(
    count: int, received: int, phases: dict[str, Phase], startup_s: dict[str, float]
) -> None:
    rates = {label: count / phase.seconds for label, phase in phases.items()}
    print(
        f"{count:,} requests, concurrency {CONCURRENCY}, simulator on 127.0.0.1 (zero latency, "
        f"no limits), {os.cpu_count()} cores; the simulator received {received:,}; "
        f"limited: --rpm {LIMITED_RPM:,} --tpm {LIMITED_TPM:,}"
    )
    print(
        f"  {'':17} {'seconds':>8} {'req/s':>7} {'x bare':>7} {'x pool':>7} {'machine':>8}"
        f"   CPU ms per request: {'client':>6} {'sim':>5} {'other':>5}"
        f"   per request: {'takes':>6} {'xacts':>6}"
    )
    for label, phase in phases.items():
        other = phase.machine_busy_s - phase.client_cpu_s - phase.simulator_cpu_s
        per_request = [1000 * cpu / count for cpu in (phase.client_cpu_s, phase.simulator_cpu_s)]
        pool = f"{rates[label] / rates['bare-pool']:7.2f}" if "bare-pool" in rates else ""
        takes = "" if phase.rate_takes is None else f"{phase.rate_takes / count:6.3f}"
        xacts = "" if phase.transactions is None else f"{phase.transactions / count:6.2f}"
        print(
            f"  {label:17} {phase.seconds:8.2f} {rates[label]:7.0f} "
            f"{rates[label] / rates['bare']:7.2f} {pool:>7} "
            f"{phase.machine_busy_s / phase.machine_total_s:8.0%}   {'':20}"
            f"{per_request[0]:6.2f} {per_request[1]:5.2f} {1000 * other / count:5.2f}"
            f"   {'':13}{takes:>6} {xacts:>6}"
        )
    print(
        "  takes: rate-bank transactions (granted or refused), counted by a trigger on "
        "rate_keys; xacts: every transaction the Postgres database committed"
    )
    if "postgres3" in rates:
        print(f"  postgres3 / postgres = {rates['postgres3'] / rates['postgres']:.2f}")
    print(
        "targets (issue 8): sqlite >= 0.80 x bare; postgres >= 0.60 x bare; "
        "postgres3 >= 1.5 x postgres"
    )
    print(
        f"targets (issue 27): limited >= {MIN_LIMITED_SHARE:.2f} x unlimited req/s; worker CPU "
        f"per request <= {MAX_CPU_OVER_POOL:.2f} x bare-pool's"
    )
    print(
        "  start-up (a one-request run's CPU, median of 3): "
        + ", ".join(f"{kind} {seconds:.2f} s" for kind, seconds in startup_s.items())
    )
    pool_cpu = phases["bare-pool"].client_cpu_s
    for label, phase in phases.items():
        if label.startswith("bare"):
            continue
        cpu_ratio = phase.client_cpu_s / pool_cpu
        workers = 3 if label.startswith("postgres3") else 1
        backend = "sqlite" if label.startswith("sqlite") else "postgres"
        beyond_s = phase.client_cpu_s - workers * startup_s.get(backend, 0.0)
        beyond_ratio = beyond_s / pool_cpu
        line = (
            f"  {label:17} {rates[label]:7.0f} req/s, worker CPU "
            f"{1000 * phase.client_cpu_s / count:5.2f} ms/request = {cpu_ratio:4.2f} x bare-pool "
            f"{verdict(cpu_ratio <= MAX_CPU_OVER_POOL):8}; beyond start-up "
            f"{1000 * beyond_s / count:5.2f} ms = {beyond_ratio:4.2f} x "
            f"{verdict(beyond_ratio <= MAX_CPU_OVER_POOL):8}"
        )
        unlimited = label.removesuffix("-limited")
        if unlimited != label and unlimited in rates:
            share = rates[label] / rates[unlimited]
            line += f"  {share:4.2f} x {unlimited} req/s {verdict(share >= MIN_LIMITED_SHARE)}"
        print(line.rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    lines = request_lines(args.requests)
    phases: dict[str, Phase] = {}
    with tempfile.TemporaryDirectory(prefix="batchrun-throughput-") as tmp:
        requests_file = Path(tmp) / "requests.jsonl"
        requests_file.write_text("\n".join(lines) + "\n")
        with Simulator() as simulator:
            phases["bare"] = measured(simulator, bare(simulator.url, lines, pooled=False))
            phases["bare-pool"] = measured(simulator, bare(simulator.url, lines, pooled=True))
            kinds = [("sqlite", 1)]
            if not args.skip_postgres:
                kinds += [("postgres", 1), ("postgres3", 3)]
            # Each phase beside its limited twin, so the machine's drift splits them least.
            for label, workers in kinds:
                for limited in (False, True):
                    name = f"{label}-limited" if limited else label
                    if label == "sqlite":
                        url = f"sqlite:///{Path(tmp) / f'{name}.db'}"
                        phases[name] = batchrun_phase(
                            simulator, url, requests_file, workers, limited
                        )
                        continue
                    with scratch_postgres() as url:
                        phases[name] = batchrun_phase(
                            simulator, url, requests_file, workers, limited
                        )
            startup_s = {"sqlite": startup_cpu_s(simulator, sqlite_file(Path(tmp)), Path(tmp))}
            if not args.skip_postgres:
                startup_s["postgres"] = startup_cpu_s(
                    simulator, lambda _name: scratch_postgres(), Path(tmp)
                )
            # Less the one-request start-up runs.
            received = int(simulator.stats()["received"]) - 3 * len(startup_s)
    report(args.requests, received, phases, startup_s)


def sqlite_file(tmp: Path) -> Callable[[str], Any]:
    """A context manager factory: a fresh SQLite file's URL under ``tmp``, by name."""

    @contextmanager
    def url(name: str) -> Iterator[str]:
        yield f"sqlite:///{tmp / f'{name}.db'}"

    return url


if __name__ == "__main__":
    main()
