"""Three workers, one limit: does the aggregate stay under it, and use it?

Three `batchrun run --rpm 600` processes share one batch of 1,500 requests, once on a
Postgres database and once on a SQLite file (both runs at the same time, each against its
own simulator process on 127.0.0.1, which itself enforces no limit, so that it counts what
the workers send). From the simulators' per-second counts it prints the most requests seen
in any 60-second window (must be ≤ 600 plus the 1 s burst the buckets allow) and the
average rate over the steady window as a share of 600 RPM (target ≥ 90 %), plus duplicate
sends (must be 0).

Run:  .venv/bin/python bench/workers.py   (about 3 minutes; needs the local Postgres at
      BATCHRUN_TEST_POSTGRES_URL or postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from common import BATCHRUN, Simulator, scratch_postgres

REQUESTS = 1500
WORKERS = 3
RPM = 600
SKIP_S = 10
TAIL_S = 10


def measure(db_url: str, workdir: Path, results: dict[str, Any], label: str) -> None:
    simulator = Simulator("--latency-s", "1.0", "--latency-jitter-s", "1.0")
    url = simulator.url
    env = {
        **os.environ,
        "BATCHRUN_DATABASE_URL": db_url,
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "sk-bench",
    }
    try:
        requests = workdir / f"{label}.jsonl"
        with requests.open("w") as stream:
            for i in range(REQUESTS):
                line = {
                    "custom_id": f"r{i:05d}",
                    "params": {
                        "model": "claude-sonnet-4-5",
                        "max_tokens": 64,
                        "messages": [{"role": "user", "content": f"question {i}"}],
                    },
                }
                stream.write(json.dumps(line) + "\n")
        batch_id = subprocess.run(
            [BATCHRUN, "submit", str(requests)], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        workers = [
            subprocess.Popen(
                [BATCHRUN, "run", batch_id, "--rpm", str(RPM), "--share"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(WORKERS)
        ]
        codes = [worker.wait() for worker in workers]
        for worker in workers:
            assert worker.stderr is not None
            worker.stderr.close()
        stats = simulator.stats()
    finally:
        simulator.stop()
    by_second = {int(k): v[0] for k, v in stats["admitted_by_second"].items()}
    first, last = min(by_second), max(by_second)
    counts = [by_second.get(s, 0) for s in range(first, last + 1)]
    windows = [sum(counts[i : i + 60]) for i in range(max(len(counts) - 59, 1))]
    steady = counts[SKIP_S:-TAIL_S]
    results[label] = {
        "exit_codes": codes,
        "received": stats["received"],
        "duplicates": stats["duplicate_receptions"],
        "max_in_any_60s": max(windows),
        "steady_share": sum(steady) / len(steady) / (RPM / 60),
        "seconds": len(counts),
    }


def main() -> None:
    results: dict[str, Any] = {}
    with (
        scratch_postgres() as pg_url,
        tempfile.TemporaryDirectory(prefix="batchrun-workers-") as tmp,
    ):
        sqlite_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        threads = [
            threading.Thread(target=measure, args=(pg_url, Path(tmp), results, "postgres")),
            threading.Thread(target=measure, args=(sqlite_url, Path(tmp), results, "sqlite")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    print(f"{WORKERS} workers, --rpm {RPM}, {REQUESTS} requests, latency 1-2 s")
    print(
        f"{'backend':9} {'max/any 60 s':>13} {'steady share':>13} {'sent':>6} {'dups':>5} "
        f"{'exit codes':>11}"
    )
    for label, figures in results.items():
        print(
            f"{label:9} {figures['max_in_any_60s']:13d} {figures['steady_share']:13.1%} "
            f"{figures['received']:6d} {figures['duplicates']:5d} "
            f"{' '.join(map(str, figures['exit_codes'])):>11}"
        )
    print(
        f"targets: max in any 60 s <= {RPM} (+{RPM // 60} burst); steady share >= 90 %; "
        "0 duplicates"
    )


if __name__ == "__main__":
    main()
