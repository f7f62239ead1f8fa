"""Dispatch overhead: batchrun against a bare httpx loop, on one simulator with no limits.

The simulator runs as its own process on 127.0.0.1 with zero latency and no limits, so the
client side is what is measured. In the same run:

- bare:      an asyncio loop with one httpx client, a semaphore of CONCURRENCY, the same
             request bodies, no database: the baseline issue 8 names;
- bare-pool: the same loop on batchrun's own HTTP layer (httpx clients of 8 connections
             each, see batchrun/client.py), so what is left between it and batchrun is the
             database and the scheduling;
- sqlite:    `batchrun run` on a SQLite file, results durable (synchronous=FULL);
- postgres:  `batchrun run` on a fresh Postgres database, one worker;
- postgres3: three `batchrun run` processes on one Postgres batch together.

Targets (issue 8): sqlite >= 0.8 x bare; postgres >= 0.6 x bare; postgres3 >= 1.5 x postgres.
Each figure is requests per second over the whole run (process start included for batchrun).

Every phase also prints how busy the machine was (all cores) and the CPU milliseconds each
request cost the client (the loop, or the batchrun workers), the simulator, and everything
else (Postgres, the kernel's share of loopback traffic, other processes). A phase that keeps
every core busy cannot go faster by adding workers.

Run:  .venv/bin/python bench/throughput.py              (20,000 requests; about 4 minutes)
      .venv/bin/python bench/throughput.py --requests 5000   (quicker)
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import BATCHRUN, Simulator, machine_cpu_s, scratch_postgres

from batchrun.transport.http import ClientPool, create_http_client

CONCURRENCY = 64
HEADERS = {
    "content-type": "application/json",
    "x-api-key": "sk-bench",
    "anthropic-version": "2023-06-01",
}


@dataclass
class Phase:
    seconds: float
    client_cpu_s: float
    simulator_cpu_s: float
    machine_busy_s: float
    machine_total_s: float


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
                response = await http.post(f"{url}/v1/messages", content=body, headers=HEADERS)
                response.json()

        await asyncio.gather(*(one(body) for body in bodies))


def bare(url: str, lines: list[str], pooled: bool) -> Callable[[], float]:
    bodies = [json.dumps(json.loads(line)["params"]).encode() for line in lines]

    def work() -> float:
        cpu = time.process_time()
        asyncio.run(bare_loop(url, bodies, pooled))
        return time.process_time() - cpu

    return work


def batchrun_run(db_url: str, url: str, requests_file: Path, workers: int) -> Callable[[], float]:
    env = {
        **os.environ,
        "BATCHRUN_DATABASE_URL": db_url,
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "sk-bench",
    }
    batch_id = subprocess.run(
        [BATCHRUN, "submit", str(requests_file)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()

    def work() -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        processes = [
            subprocess.Popen(
                [BATCHRUN, "run", batch_id, "--max-concurrency", str(CONCURRENCY)],
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

    return work


def report(count: int, received: int, phases: dict[str, Phase]) -> None:
    rates = {label: count / phase.seconds for label, phase in phases.items()}
    print(
        f"{count:,} requests, concurrency {CONCURRENCY}, simulator on 127.0.0.1 (zero latency, "
        f"no limits), {os.cpu_count()} cores; the simulator received {received:,}"
    )
    print(
        f"  {'':10} {'seconds':>8} {'req/s':>7} {'x bare':>7} {'x pool':>7} {'machine':>8}"
        f"   CPU ms per request: {'client':>6} {'sim':>5} {'other':>5}"
    )
    for label, phase in phases.items():
        other = phase.machine_busy_s - phase.client_cpu_s - phase.simulator_cpu_s
        per_request = [1000 * cpu / count for cpu in (phase.client_cpu_s, phase.simulator_cpu_s)]
        pool = f"{rates[label] / rates['bare-pool']:7.2f}" if "bare-pool" in rates else ""
        print(
            f"  {label:10} {phase.seconds:8.2f} {rates[label]:7.0f} "
            f"{rates[label] / rates['bare']:7.2f} {pool:>7} "
            f"{phase.machine_busy_s / phase.machine_total_s:8.0%}   {'':20}"
            f"{per_request[0]:6.2f} {per_request[1]:5.2f} {1000 * other / count:5.2f}"
        )
    if "postgres3" in rates:
        print(f"  postgres3 / postgres = {rates['postgres3'] / rates['postgres']:.2f}")
    print("targets: sqlite >= 0.80 x bare; postgres >= 0.60 x bare; postgres3 >= 1.5 x postgres")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
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
            sqlite_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            work = batchrun_run(sqlite_url, simulator.url, requests_file, 1)
            phases["sqlite"] = measured(simulator, work)
            if not args.skip_postgres:
                for label, workers in (("postgres", 1), ("postgres3", 3)):
                    with scratch_postgres() as url:
                        work = batchrun_run(url, simulator.url, requests_file, workers)
                        phases[label] = measured(simulator, work)
            received = int(simulator.stats()["received"])
    report(args.requests, received, phases)


if __name__ == "__main__":
    main()
