"""Several workers sharing one limit on Postgres: how many transactions each request costs,
and of which kind.

WORKERS `batchrun run --rpm RPM` processes share one batch on a fresh Postgres database,
against a simulator process on 127.0.0.1 that enforces no limit itself (so it counts what
the workers send). Each worker runs with a hook that counts the store calls its database
thread makes (each is one transaction), by store method: claims, records, lease renewals,
rate-bank takes, control checks. The database's own count (``pg_stat_database.xact_commit``
of the scratch database, read once the workers' sessions have ended) covers everything,
`submit` excepted. It prints both per request, the most requests the simulator saw in any
60 s window against the limit, the steady share of the limit, and duplicate sends.

Targets (issue 27): all transactions together <= 1 per request with six workers sharing
3,000 RPM; rate-bank takes <= 0.05 per request with three workers sharing 30,000 RPM.

Run:  .venv/bin/python bench/transactions.py                      (6 workers, 3,000 RPM)
      .venv/bin/python bench/transactions.py --workers 3 --rpm 30000 --requests 20000
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Simulator, committed, scratch_postgres

SKIP_S = 10
TAIL_S = 5
# Run in each worker before batchrun's CLI: count the database thread's calls by method.
HOOK = """
import atexit, collections, json, os, sys
from batchrun.dispatch import dbthread
counts = collections.Counter()
original = dbthread.DatabaseThread.call
async def call(self, function, *args, **kwargs):
    counts[getattr(function, "__qualname__", repr(function))] += 1
    return await original(self, function, *args, **kwargs)
dbthread.DatabaseThread.call = call
atexit.register(lambda: open(os.environ["BENCH_COUNTS"], "w").write(json.dumps(counts)))
from batchrun.cli import main
sys.argv = ["batchrun", *sys.argv[1:]]
main()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--latency-s", type=float, default=0.5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="batchrun-xacts-") as tmp,
        scratch_postgres() as db_url,
        Simulator("--latency-s", str(args.latency_s), "--latency-jitter-s", "0.5") as simulator,
    ):
        env = {
            **os.environ,
            "BATCHRUN_DATABASE_URL": db_url,
            "ANTHROPIC_BASE_URL": simulator.url,
            "ANTHROPIC_API_KEY": "sk-bench",
        }
        requests = Path(tmp) / "requests.jsonl"
        with requests.open("w") as stream:
            for i in range(args.requests):
                params = {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": f"question {i}"}],
                }
                stream.write(json.dumps({"custom_id": f"r{i:06d}", "params": params}) + "\n")
        batch_id = subprocess.run(
            [sys.executable, "-c", HOOK, "submit", str(requests)],
            env={**env, "BENCH_COUNTS": str(Path(tmp) / "submit.json")},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        before = committed(db_url)
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", HOOK, "run", batch_id, "--rpm", str(args.rpm)],
                env={**env, "BENCH_COUNTS": str(Path(tmp) / f"worker{index}.json")},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for index in range(args.workers)
        ]
        codes = [worker.wait() for worker in workers]
        transactions = committed(db_url) - before
        stats = simulator.stats()
        kinds: collections.Counter[str] = collections.Counter()
        for index in range(args.workers):
            path = Path(tmp) / f"worker{index}.json"
            if path.exists():
                kinds.update(json.loads(path.read_text()))
    by_second = {int(k): v[0] for k, v in stats["admitted_by_second"].items()}
    first, last = min(by_second), max(by_second)
    counts = [by_second.get(s, 0) for s in range(first, last + 1)]
    windows = [sum(counts[i : i + 60]) for i in range(max(len(counts) - 59, 1))]
    steady = counts[SKIP_S:-TAIL_S] or counts
    n = args.requests
    print(
        f"{args.workers} workers sharing --rpm {args.rpm:,} on Postgres, {n:,} requests, "
        f"latency {args.latency_s}-{args.latency_s + 0.5} s; exit codes {codes}"
    )
    print(
        f"  sent {stats['received']:,}, duplicates {stats['duplicate_receptions']}, "
        f"most in any 60 s {max(windows):,} (limit {args.rpm:,}), steady "
        f"{sum(steady) / len(steady) / (args.rpm / 60):.1%} of the limit over {len(steady)} s"
    )
    print(f"  Postgres transactions (xact_commit) per request: {transactions / n:.3f}")
    print("  the workers' store calls per request, by kind:")
    for kind, count in kinds.most_common():
        print(f"    {kind:40} {count / n:7.3f}  ({count:,})")
    print(f"    {'(all)':40} {sum(kinds.values()) / n:7.3f}")


if __name__ == "__main__":
    main()
