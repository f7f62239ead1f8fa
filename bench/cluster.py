"""Three workers configured twice too high: do they learn the real limit together?

Each scenario runs twice at the same time, each against its own simulator process on
127.0.0.1 (with the scenario's limits, answering 429s with retry-after only, so the limit must
be learned rather than read from headers) and its own fresh Postgres database:

- cluster: three `batchrun run --share` processes on one database, each configured at twice
  the simulator's limit;
- single: one `batchrun run` process, configured the same (the baseline: what one worker
  learns alone).

Scenarios:

  rpm  simulator 600 RPM, workers --rpm 1200
  tpm  simulator 60,000 TPM (input + output), workers --tpm 120000; replies of ~40 tokens
       against max_tokens 1024

From the simulators' per-second admissions it prints, over the steady window (from SKIP_S
after the first admission to TAIL_S before the last), the share of the real limit achieved
(target >= 95 %) and the share of 429s among all sends (target <= 5 %), the limit learned in
the database at the end, requests sent twice (resends beyond the retries of 429s; must be 0)
and the workers' exit codes.

Run:  .venv/bin/python bench/cluster.py               (about 6 minutes: rpm, then tpm)
      .venv/bin/python bench/cluster.py --only rpm --duration-s 60
      (needs the local Postgres at BATCHRUN_TEST_POSTGRES_URL or
      postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import BATCHRUN, Simulator, machine_cpu_s, scratch_postgres
from sqlalchemy import create_engine, text

WORKERS = 3
SKIP_S = 30
TAIL_S = 10
LATENCY_S = 1.0
JITTER_S = 1.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    binding: str  # "requests" or "tokens"
    dimension: str  # the limit's name in the database
    server_limit: float  # per minute
    server_args: tuple[str, ...]
    run_args: tuple[str, ...]
    requests_per_s: float  # expected steady rate, to size the batch
    max_tokens: int = 64
    prompt_chars: int = 40


SCENARIOS = [
    Scenario(
        "rpm",
        "600 RPM, configured 1,200",
        "requests",
        "rpm",
        600,
        ("--rpm", "600", "--burst-s", "2"),
        ("--rpm", "1200"),
        10,
    ),
    Scenario(
        "tpm",
        "60,000 TPM, configured 120,000",
        "tokens",
        "tpm",
        60_000,
        ("--tpm", "60000", "--burst-s", "2", "--output-tokens", "40"),
        ("--tpm", "120000"),
        5.5,
        max_tokens=1024,
        prompt_chars=400,
    ),
]


def write_requests(path: Path, scenario: Scenario, count: int) -> None:
    words = "the quick brown fox jumps over the lazy dog while batch jobs wait their turn "
    with path.open("w") as stream:
        for i in range(count):
            prompt = f"Request {i}: " + (words * (scenario.prompt_chars // len(words) + 1))
            line = {
                "custom_id": f"r{i:05d}",
                "params": {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": scenario.max_tokens,
                    "messages": [{"role": "user", "content": prompt[: scenario.prompt_chars]}],
                },
            }
            stream.write(json.dumps(line) + "\n")


def learned_limit(db_url: str, dimension: str) -> float | None:
    """The limit learned in the shared record at the end, as written (before its climb)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            value = connection.execute(
                text("SELECT learned FROM rate_buckets WHERE dimension = :d"), {"d": dimension}
            ).scalar()
    finally:
        engine.dispose()
    return None if value is None else float(value)


def measure(
    scenario: Scenario, workers: int, count: int, workdir: Path, results: dict[str, Any]
) -> None:
    label = "cluster" if workers > 1 else "single"
    simulator = Simulator(
        "--latency-s",
        str(LATENCY_S),
        "--latency-jitter-s",
        str(JITTER_S),
        "--seed",
        "7",
        "--no-ratelimit-headers",
        *scenario.server_args,
    )
    try:
        with scratch_postgres() as db_url:
            env = {
                **os.environ,
                "BATCHRUN_DATABASE_URL": db_url,
                "ANTHROPIC_BASE_URL": simulator.url,
                "ANTHROPIC_API_KEY": "sk-bench",
            }
            requests = workdir / f"{scenario.name}-{label}.jsonl"
            write_requests(requests, scenario, count)
            batch_id = subprocess.run(
                [BATCHRUN, "submit", str(requests)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            processes = [
                subprocess.Popen(
                    [BATCHRUN, "run", batch_id, *scenario.run_args, "--share"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(workers)
            ]
            codes = [process.wait() for process in processes]
            learned = learned_limit(db_url, scenario.dimension)
        stats = simulator.stats()
    finally:
        simulator.stop()
    by_second = {int(k): v for k, v in stats["admitted_by_second"].items()}
    first, last = min(by_second), max(by_second)
    window = range(first + SKIP_S, last - TAIL_S)
    requests_in = sum(by_second.get(s, [0, 0, 0])[0] for s in window)
    tokens_in = sum(sum(by_second.get(s, [0, 0, 0])[1:]) for s in window)
    achieved = requests_in if scenario.binding == "requests" else tokens_in
    rejected = stats["by_status"].get("429", 0)
    results[label] = {
        "share": achieved / (len(window) / 60) / scenario.server_limit,
        "rejected": rejected,
        "sent": stats["received"],
        "rejected_share": rejected / max(stats["received"], 1),
        "learned": learned,
        # A request refused with a 429 is sent again, byte for byte: only resends beyond
        # those would be the same request sent twice.
        "duplicates": stats["duplicate_receptions"] - rejected,
        "codes": codes,
        "seconds": last - first + 1,
        "steady_s": len(window),
    }


def run_scenario(scenario: Scenario, duration_s: float, workdir: Path) -> dict[str, Any]:
    count = int(scenario.requests_per_s * (duration_s + SKIP_S + TAIL_S))
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=measure, args=(scenario, n, count, workdir, results))
        for n in (WORKERS, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results["requests"] = count
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration-s", type=float, default=120, help="steady seconds per scenario (default 120)"
    )
    parser.add_argument("--only", nargs="*", help="scenario names (rpm tpm)")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    started = time.monotonic()
    busy_before, total_before = machine_cpu_s()
    outcomes = {}
    with tempfile.TemporaryDirectory(prefix="batchrun-cluster-") as tmp:
        for scenario in chosen:
            outcomes[scenario.name] = run_scenario(scenario, args.duration_s, Path(tmp))
    busy_after, total_after = machine_cpu_s()
    print(
        f"{WORKERS} workers on one Postgres vs 1 worker, each configured 2x the simulator's "
        f"limit; 429s with retry-after only; latency {LATENCY_S:g}-{LATENCY_S + JITTER_S:g} s"
    )
    print(
        f"{'':4} {'scenario':32} {'runner':8} {'of limit':>9} {'429s':>6} {'sent':>6} "
        f"{'429 %':>6} {'learned':>9} {'dups':>5} {'exit':>6}  target"
    )
    for scenario in chosen:
        figures = outcomes[scenario.name]
        for label in ("cluster", "single"):
            f = figures[label]
            ok = f["share"] >= 0.95 and f["rejected_share"] <= 0.05 and f["duplicates"] == 0
            learned = f"{f['learned']:9.0f}" if f["learned"] is not None else f"{'-':>9}"
            print(
                f"{scenario.name:4} {scenario.description:32} {label:8} {f['share']:9.1%} "
                f"{f['rejected']:6d} {f['sent']:6d} {f['rejected_share']:6.1%} {learned} "
                f"{f['duplicates']:5d} {' '.join(map(str, f['codes'])):>6}  "
                f">=95 % <=5 % {'PASS' if ok else 'FAIL'}"
            )
    busy = (busy_after - busy_before) / max(total_after - total_before, 1e-9)
    print(
        f"\nsteady window: from {SKIP_S} s after the first admission to {TAIL_S} s before the "
        f"last; 'learned': the limit per minute the shared record held at the end (before "
        f"its climb since). Machine CPU busy {busy:.0%} over the run; "
        f"ran {time.monotonic() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
