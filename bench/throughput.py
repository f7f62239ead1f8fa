"""Dispatch overhead: batchrun against a bare httpx loop, on one simulator with no limits.

The simulator runs as its own process on 127.0.0.1 with zero latency and no limits, so the
client side is what is measured. In the same run:

- bare:      an asyncio loop with httpx, a semaphore of CONCURRENCY, the same request bodies,
             no database (the ceiling for any Python client on this machine);
- sqlite:    `batchrun run` on a SQLite file, results durable (synchronous=FULL);
- postgres:  `batchrun run` on a fresh Postgres database, one worker;
- postgres3: three `batchrun run` processes on one Postgres batch together.

Targets (issue 8): sqlite >= 0.8 x bare; postgres >= 0.6 x bare; postgres3 >= 1.5 x postgres.
Each figure is requests per second over the whole run (process start included for batchrun).

Run:  .venv/bin/python bench/throughput.py              (20,000 requests; about 2 minutes)
      .venv/bin/python bench/throughput.py --requests 5000   (quicker)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

BATCHRUN = str(Path(sys.executable).parent / "batchrun")
CONCURRENCY = 64


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


class Simulator:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [BATCHRUN, "simulate", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()

    def received(self) -> int:
        return int(httpx.get(f"{self.url}/_simulator/stats", timeout=30).json()["received"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


async def bare_loop(url: str, lines: list[str]) -> float:
    bodies = [json.dumps(json.loads(line)["params"]).encode() for line in lines]
    headers = {
        "content-type": "application/json",
        "x-api-key": "sk-bench",
        "anthropic-version": "2023-06-01",
    }
    slots = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def one(body: bytes) -> None:
            async with slots:
                response = await http.post("/v1/messages", content=body, headers=headers)
                response.json()

        started = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        return time.perf_counter() - started


def batchrun_run(db_url: str, url: str, requests_file: Path, workers: int) -> float:
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
    started = time.perf_counter()
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
    elapsed = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"batchrun run exited {codes}")
    return elapsed


def fresh_postgres() -> tuple[str, str]:
    admin = os.environ.get(
        "BATCHRUN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    name = f"batchrun_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return admin, make_url(admin).set(database=name).render_as_string(hide_password=False)


def drop_postgres(admin: str, url: str) -> None:
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        name = make_url(url).database
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    lines = request_lines(args.requests)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="batchrun-throughput-") as tmp:
        requests_file = Path(tmp) / "requests.jsonl"
        requests_file.write_text("\n".join(lines) + "\n")
        simulator = Simulator()
        try:
            figures["bare"] = asyncio.run(bare_loop(simulator.url, lines))
            figures["sqlite"] = batchrun_run(
                f"sqlite:///{Path(tmp) / 'bench.db'}", simulator.url, requests_file, 1
            )
            if not args.skip_postgres:
                for label, workers in (("postgres", 1), ("postgres3", 3)):
                    admin, url = fresh_postgres()
                    try:
                        figures[label] = batchrun_run(url, simulator.url, requests_file, workers)
                    finally:
                        drop_postgres(admin, url)
            received = simulator.received()
        finally:
            simulator.stop()
    rates = {label: args.requests / seconds for label, seconds in figures.items()}
    print(
        f"{args.requests:,} requests, concurrency {CONCURRENCY}, simulator on 127.0.0.1 "
        f"(zero latency, no limits); the simulator received {received:,}"
    )
    for label, rate in rates.items():
        ratio = rate / rates["bare"]
        print(f"  {label:10} {figures[label]:7.2f} s  {rate:8.0f} req/s  {ratio:5.2f} x bare")
    if "postgres3" in rates:
        print(f"  postgres3 / postgres = {rates['postgres3'] / rates['postgres']:.2f}")
    print("targets: sqlite >= 0.80 x bare; postgres >= 0.60 x bare; postgres3 >= 1.5 x postgres")


if __name__ == "__main__":
    main()
