"""`batchrun run --processes N`: does one command use the machine's cores (issue 27 item 4)?

Each phase submits the same requests to a fresh SQLite file (or, with --postgres, a fresh
Postgres database) and drains them with one `batchrun run --processes N`, against a fresh
`batchrun simulate` process on 127.0.0.1 answering in 50-150 ms (the issue's high-limit
case). In the same run, back to back:

- none  p1 / p2 / auto: no limit (`--no-slow-start`: the simulator announces none, and the
                        slow start would otherwise pace the whole run); `--processes 1`,
                        `2`, and `auto` (the usable cores);
- high  p1 / p2:        `--rpm 6,000,000 --tpm 1,000,000,000`, a limit that never binds but
                        engages the limiter (every request takes from the database bank);
- bind  p1 / p2:        `--rpm BIND_RPM` (`--bind-rpm`) against a simulator that enforces
                        the same limit (2 s of burst): a worker that sends too much gets 429s.

For each it prints requests/s over the whole command (start-up included), the CPU
milliseconds per request of batchrun (the parent and its workers together), of the
simulator, and of everything else on the machine (Postgres, the kernel, other processes),
how busy the machine was, and the share of it batchrun and the simulator had. The simulator
is a Python process on the same cores (under 1 ms of CPU per request here, against about
4 for a worker), so on 2 cores two workers and the simulator share them; and where other
processes keep the cores busy, a second worker has no core of its own to run on. For the
binding phases: the steady rate (first and last 5 s left out) as a share of the limit, the
most sent in any 10 s window against 10 s of the limit plus its burst, 429s and duplicates.

Targets (issue 27): p2 >= 1.6 x p1 at no limit or a high one on 2 cores; exact at a binding
limit (steady share >= 97 %, no 10 s window above the limit plus its burst, no duplicates).
Whether the machine can show the 1.6 x at all is printed beside it: the CPU a request costs
with two processes (batchrun and the simulator, which run on the same cores) times 1.6 x
p1's rate is the cores the target needs; where that exceeds the machine's, the ratio is
bounded by the cores, not by how batchrun shares the work.

Run:  .venv/bin/python bench/processes.py      (about 11 minutes a round on 2026-12-07 with the
                                                machine loaded by other work; less when quiet)
      .venv/bin/python bench/processes.py --requests 3000 --bind-rpm 600 --rounds 2
      .venv/bin/python bench/processes.py --postgres
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common import BATCHRUN, Simulator, machine_cpu_s, scratch_postgres
from throughput import LIMIT_FLAGS, request_lines

# No limit known and none found: the slow start off (see the module).
NO_LIMIT_FLAGS = ("--no-slow-start",)

LATENCY = ("--latency-s", "0.05", "--latency-jitter-s", "0.1")
BIND_RPM = 3000
BIND_REQUESTS = 2000
MIN_SPEEDUP = 1.6
MIN_BIND_SHARE = 0.97
SKIP_S = 5


@dataclass
class Phase:
    label: str
    requests: int
    seconds: float
    client_cpu_s: float
    simulator_cpu_s: float
    machine_busy_s: float
    machine_total_s: float
    exit_code: int
    stats: dict[str, object] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@contextmanager
def database(postgres: bool, tmp: Path, label: str) -> Iterator[str]:
    if postgres:
        with scratch_postgres() as url:
            yield url
    else:
        yield f"sqlite:///{tmp / (label.replace(' ', '-') + '.db')}"


def phase(
    label: str,
    requests_file: Path,
    count: int,
    processes: str,
    flags: tuple[str, ...],
    simulator_args: tuple[str, ...],
    postgres: bool,
    tmp: Path,
) -> Phase:
    with (
        Simulator(*LATENCY, *simulator_args) as simulator,
        database(postgres, tmp, label) as db_url,
    ):
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
        busy, total = machine_cpu_s()
        simulator_cpu = simulator.cpu_s()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        code = subprocess.run(
            [BATCHRUN, "run", batch_id, "--processes", processes, "--quiet", *flags],
            env=env,
            stdout=subprocess.DEVNULL,
        ).returncode
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_after, total_after = machine_cpu_s()
        return Phase(
            label=label,
            requests=count,
            seconds=seconds,
            client_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            simulator_cpu_s=simulator.cpu_s() - simulator_cpu,
            machine_busy_s=busy_after - busy,
            machine_total_s=total_after - total,
            exit_code=code,
            stats=simulator.stats(),
        )


def bind_figures(stats: dict[str, object], bind_rpm: int) -> tuple[float, int, int, int]:
    """Steady share of the limit, most in any 10 s, 429s, duplicates."""
    admitted = stats["admitted_by_second"]
    assert isinstance(admitted, dict)
    by_second = {int(k): v[0] for k, v in admitted.items()}
    first, last = min(by_second), max(by_second)
    counts = [by_second.get(s, 0) for s in range(first, last + 1)]
    steady = counts[SKIP_S:-SKIP_S] or counts
    windows = [sum(counts[i : i + 10]) for i in range(max(len(counts) - 9, 1))]
    by_status = stats["by_status"]
    assert isinstance(by_status, dict)
    rate_limited = int(by_status.get("429", 0))
    duplicates = stats["duplicate_receptions"]
    assert isinstance(duplicates, int)
    return sum(steady) / len(steady) / (bind_rpm / 60), max(windows), rate_limited, duplicates


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--bind-rpm", type=int, default=BIND_RPM)
    args = parser.parse_args()
    bind_rpm = args.bind_rpm
    bind_requests = max(bind_rpm * 2 // 3, 200)  # about 40 s at the limit
    bind_simulator = ("--rpm", str(bind_rpm), "--burst-s", "2")
    cores = len(os.sched_getaffinity(0))
    results: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="batchrun-processes-") as tmp_name:
        tmp = Path(tmp_name)
        requests_file = tmp / "requests.jsonl"
        requests_file.write_text("\n".join(request_lines(args.requests)) + "\n")
        bind_file = tmp / "bind.jsonl"
        bind_file.write_text("\n".join(request_lines(bind_requests)) + "\n")
        plan: list[tuple[str, Path, int, str, tuple[str, ...], tuple[str, ...]]] = [
            ("none p1", requests_file, args.requests, "1", NO_LIMIT_FLAGS, ()),
            ("none p2", requests_file, args.requests, "2", NO_LIMIT_FLAGS, ()),
            ("none auto", requests_file, args.requests, "auto", NO_LIMIT_FLAGS, ()),
            ("high p1", requests_file, args.requests, "1", LIMIT_FLAGS, ()),
            ("high p2", requests_file, args.requests, "2", LIMIT_FLAGS, ()),
            ("bind p1", bind_file, bind_requests, "1", ("--rpm", str(bind_rpm)), bind_simulator),
            ("bind p2", bind_file, bind_requests, "2", ("--rpm", str(bind_rpm)), bind_simulator),
        ]
        print(
            f"{cores} usable cores (auto = {cores}); {'Postgres' if args.postgres else 'SQLite'}; "
            f"answers in 50-150 ms; load average before: {load()}",
            flush=True,
        )
        for round_no in range(1, args.rounds + 1):
            for label, path, count, processes, flags, simulator_args in plan:
                done = phase(
                    label, path, count, processes, flags, simulator_args, args.postgres, tmp
                )
                results.append(done)
                print(f"  round {round_no}: {describe(done, bind_rpm)}", flush=True)
    summarise(results, bind_rpm, cores)


def describe(done: Phase, bind_rpm: int) -> str:
    n = done.requests
    ours = done.client_cpu_s + done.simulator_cpu_s
    other = done.machine_busy_s - ours
    line = (
        f"{done.label:9} {n:6d} req {done.seconds:6.1f} s {done.rate:6.0f} req/s  "
        f"CPU ms/request batchrun {1000 * done.client_cpu_s / n:5.2f} "
        f"sim {1000 * done.simulator_cpu_s / n:5.2f} other {1000 * other / n:6.2f}  "
        f"machine busy {done.machine_busy_s / done.machine_total_s:4.0%}, "
        f"batchrun+sim {ours / done.machine_total_s:4.0%}  exit {done.exit_code}"
    )
    if done.label.startswith("bind"):
        share, most, limited, duplicates = bind_figures(done.stats, bind_rpm)
        line += (
            f"  steady {share:6.1%} of {bind_rpm}/min, most in 10 s {most} "
            f"(limit {bind_rpm // 6} + burst {bind_rpm // 30}), 429s {limited}, dups {duplicates}"
        )
    return line


def cpu_ceiling(one: Phase, two: Phase, cores: int) -> str:
    """What the machine's cores allow a second process at the CPU each request cost with two
    (batchrun's processes and the simulator together, both on these cores): the highest
    p2 / p1 the cores could give, and the cores 1.6 x p1 would need."""
    per_request_s = (two.client_cpu_s + two.simulator_cpu_s) / two.requests
    ceiling = cores / per_request_s / one.rate
    needed = MIN_SPEEDUP * one.rate * per_request_s
    verdict = "the machine can show the target" if needed <= cores else "beyond this machine"
    return (
        f"CPU bound: {1000 * per_request_s:.2f} ms of CPU a request with two processes "
        f"(batchrun {1000 * two.client_cpu_s / two.requests:.2f} + simulator "
        f"{1000 * two.simulator_cpu_s / two.requests:.2f}); {cores} cores allow at most "
        f"{ceiling:.2f} x p1; {MIN_SPEEDUP} x p1 needs {needed:.2f} cores: {verdict}"
    )


def summarise(results: list[Phase], bind_rpm: int, cores: int) -> None:
    def of(label: str) -> list[Phase]:
        return [r for r in results if r.label == label]

    print("summary (ranges over rounds):")
    for kind in ("none", "high"):
        pairs = list(zip(of(f"{kind} p1"), of(f"{kind} p2"), strict=True))
        ratios = [two.rate / one.rate for one, two in pairs]
        # How much of the machine batchrun and the simulator had in the p1 phases: where
        # other processes keep the cores busy, a second worker has no core to run on.
        shares = [
            (one.client_cpu_s + one.simulator_cpu_s) / one.machine_total_s for one, _ in pairs
        ]
        print(
            f"  {kind}: p2 / p1 = {min(ratios):.2f}-{max(ratios):.2f} "
            f"(target >= {MIN_SPEEDUP}: {'met' if min(ratios) >= MIN_SPEEDUP else 'NOT met'}); "
            f"batchrun + simulator used {min(shares):.0%}-{max(shares):.0%} of the machine's "
            "CPU with p1"
        )
        for one, two in pairs:
            print(f"    {cpu_ceiling(one, two, cores)}")
    for label in ("bind p1", "bind p2"):
        for r in of(label):
            share, most, limited, duplicates = bind_figures(r.stats, bind_rpm)
            exact = share >= MIN_BIND_SHARE and most <= bind_rpm // 6 + bind_rpm // 30
            print(
                f"  {label}: {share:.1%} of the limit, most in 10 s {most}, 429s {limited}, "
                f"dups {duplicates}: {'met' if exact and not duplicates else 'NOT met'}"
            )
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
