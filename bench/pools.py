"""Pools, concurrency from the limits and the gentle start, measured on real processes.

Every scenario runs the real CLI (`batchrun submit` + `batchrun run`, SQLite) against
`batchrun simulate` processes on 127.0.0.1; figures come from the simulators' own
per-second admission counts over the steady window (the first seconds and the drain at the
end left out) and from the exported results.

  pool      a pool of two simulators at 300 RPM each (2 s of burst, answers in 1.5-2.5 s),
            1,200 requests: rate against the sum of the limits (600), 429s, duplicates;
            baseline in the same run: one of them alone, for the same time
  failover  the same pool; one simulator is stopped a third of the way in: everything
            finishes, the survivor's rate after the stop against its limit, duplicates, lost
  latency   3,000 RPM with 8 s answers, default options except --rpm: rate against the
            limit; baseline in the same run: --max-concurrency 256 (the old fixed default)
  wrongkey  a wrong key: 401s before the batch pauses; and a pool with one member's key
            wrong: 401s from that member, and the batch finishes on the other

Run:  .venv/bin/python bench/pools.py                 (about 7 minutes)
      .venv/bin/python bench/pools.py --only latency  (one scenario)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import BATCHRUN, Simulator

TAIL_S = 6
# Each member of the pool scenarios: 300 RPM, 2 s of burst, answers in 1.5-2.5 s.
MEMBER_ARGS = ("--rpm", "300", "--burst-s", "2", "--latency-s", "1.5", "--latency-jitter-s", "1")
MEMBER_RPM = 300


def request_lines(count: int, *, max_tokens: int = 256) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"r{i:06d}",
            "params": {
                "model": "claude-sonnet-4-5",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"Request {i}: say something short."}],
            },
        }
        for i in range(count)
    ]


def endpoint_table(name: str, url: str, *, rpm: int | None = None, key_env: str = "") -> str:
    auth = f'auth = "x-api-key"\napi_key_env = "{key_env}"\n' if key_env else 'auth = "none"\n'
    limits = f'[endpoints.{name}.limits."*"]\nrpm = {rpm}\n' if rpm else ""
    return f'[endpoints.{name}]\nbase_url = "{url}"\n{auth}{limits}'


class Workspace:
    """A directory with a config file and a SQLite database for one batchrun."""

    def __init__(self, root: Path, name: str, config: str, env: dict[str, str] | None = None):
        self.dir = root / name
        self.dir.mkdir()
        (self.dir / "batchrun.toml").write_text(config)
        self.env = {
            **os.environ,
            "BATCHRUN_DATABASE_URL": f"sqlite:///{self.dir / 'jobs.db'}",
            "BATCHRUN_CONFIG": str(self.dir / "batchrun.toml"),
            **(env or {}),
        }

    async def cli(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            BATCHRUN,
            *args,
            env=self.env,
            cwd=self.dir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        code = process.returncode or 0
        if check and code != 0:
            raise RuntimeError(f"batchrun {args[0]} failed ({code}): {err.decode()[-800:]}")
        return code, out.decode(), err.decode()

    async def submit(self, lines: list[dict[str, Any]], endpoint: str) -> str:
        path = self.dir / "requests.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        _, out, _ = await self.cli("submit", str(path), "--endpoint", endpoint)
        return out.strip()

    async def flat_results(self, batch_id: str) -> list[dict[str, Any]]:
        _, out, _ = await self.cli("results", batch_id, "--format", "flat", "--partial")
        return [json.loads(line) for line in out.splitlines()]


def steady_rate(stats: list[dict[str, Any]], skip_s: int, *, until: int | None = None) -> float:
    """Requests a minute the simulators admitted together over their steady window."""
    by_second: Counter[int] = Counter()
    for one in stats:
        for second, (requests, *_tokens) in one["admitted_by_second"].items():
            by_second[int(second)] += requests
    first, last = min(by_second), max(by_second)
    end = last - TAIL_S if until is None else min(until, last - TAIL_S)
    window = range(first + skip_s, end)
    return sum(by_second[s] for s in window) * 60 / len(window)


def duplicates(records: list[dict[str, Any]]) -> int:
    return sum(n - 1 for n in Counter(r["custom_id"] for r in records).values())


def pool_config(a: Simulator, b: Simulator) -> str:
    """Two endpoints at the members' limit, and the pool "both" of them."""
    return (
        endpoint_table("sim-a", a.url, rpm=MEMBER_RPM)
        + endpoint_table("sim-b", b.url, rpm=MEMBER_RPM)
        + '[pools.both]\nmembers = ["sim-a", "sim-b"]\n'
    )


# -- scenarios ---------------------------------------------------------------------------------


async def pool_scenario(root: Path, count: int) -> dict[str, Any]:
    with Simulator(*MEMBER_ARGS) as a, Simulator(*MEMBER_ARGS) as b, Simulator(*MEMBER_ARGS) as c:
        pooled = Workspace(root, "pool", pool_config(a, b))
        single = Workspace(root, "single", endpoint_table("sim-c", c.url, rpm=MEMBER_RPM))
        lines = request_lines(count)
        pool_id = await pooled.submit(lines, "both")
        single_id = await single.submit(lines, "sim-c")
        started = time.monotonic()
        baseline = asyncio.ensure_future(single.cli("run", single_id, check=False))
        await pooled.cli("run", pool_id)
        elapsed_s = time.monotonic() - started
        baseline.cancel()
        await single.cli("cancel", single_id, check=False)
        stats = [a.stats(), b.stats()]
        records = await pooled.flat_results(pool_id)
        pool_rate = steady_rate(stats, skip_s=10)
        # The single endpoint over the same seconds as the pool's steady window.
        single_rate = steady_rate([c.stats()], skip_s=10)
    sent = sum(s["received"] for s in stats)
    return {
        "requests": count,
        "elapsed_s": round(elapsed_s, 1),
        "pool_requests_per_min": round(pool_rate, 1),
        "utilisation_of_600": round(pool_rate / 600, 4),
        "single_requests_per_min": round(single_rate, 1),
        "pool_over_single": round(pool_rate / single_rate, 3),
        "429_share": round(sum(s["by_status"].get("429", 0) for s in stats) / sent, 4),
        "succeeded": sum(r["status"] == "succeeded" for r in records),
        "duplicate_results": duplicates(records),
        "duplicate_receptions": sum(s["duplicate_receptions"] for s in stats),
        "answered_by": dict(Counter(r["endpoint"] for r in records)),
    }


async def failover_scenario(root: Path, count: int) -> dict[str, Any]:
    with Simulator(*MEMBER_ARGS) as a, Simulator(*MEMBER_ARGS) as b:
        work = Workspace(root, "failover", pool_config(a, b))
        batch_id = await work.submit(request_lines(count), "both")
        run = asyncio.ensure_future(work.cli("run", batch_id))
        # A third of the way in at 600 a minute.
        await asyncio.sleep(count / 3 / 10)
        b_stats = b.stats()
        stopped_at = int(time.monotonic())
        b.stop()
        await run
        a_stats = a.stats()
        records = await work.flat_results(batch_id)
        _, status_text, _ = await work.cli("status", batch_id)
    # The survivor alone, from 15 s after the stop (its share ramps up as b drops out).
    by_second = {int(k): v[0] for k, v in a_stats["admitted_by_second"].items()}
    last = max(by_second)
    window = range(stopped_at + 15, last - TAIL_S)
    survivor_rate = sum(by_second.get(s, 0) for s in window) * 60 / max(len(window), 1)
    received = [record for record in records if record["status"] == "succeeded"]
    return {
        "requests": count,
        "succeeded": len(received),
        "lost": count - len({r["custom_id"] for r in records}),
        "duplicate_results": duplicates(records),
        "duplicate_receptions_on_survivor": a_stats["duplicate_receptions"],
        "survivor_requests_per_min_after_stop": round(survivor_rate, 1),
        "survivor_utilisation": round(survivor_rate / MEMBER_RPM, 4),
        "survivor_window_s": len(window),
        "received_by_stopped_before_stop": b_stats["received"],
        "answered_by": dict(Counter(r["endpoint"] for r in records)),
        "status_says": [line.strip() for line in status_text.splitlines() if "sim-" in line],
    }


async def latency_scenario(root: Path, seconds: int) -> dict[str, Any]:
    rpm = 3000
    count = rpm // 60 * seconds
    args = ("--rpm", str(rpm), "--burst-s", "2", "--latency-s", "7", "--latency-jitter-s", "2")
    with Simulator(*args) as auto_sim, Simulator(*args) as fixed_sim:
        auto = Workspace(root, "auto", endpoint_table("sim", auto_sim.url))
        fixed = Workspace(root, "fixed", endpoint_table("sim", fixed_sim.url))
        lines = request_lines(count)
        auto_id = await auto.submit(lines, "sim")
        fixed_id = await fixed.submit(lines, "sim")
        baseline = asyncio.ensure_future(
            fixed.cli("run", fixed_id, "--rpm", str(rpm), "--max-concurrency", "256", check=False)
        )
        await auto.cli("run", auto_id, "--rpm", str(rpm))
        baseline.cancel()
        auto_rate = steady_rate([auto_sim.stats()], skip_s=15)
        fixed_rate = steady_rate([fixed_sim.stats()], skip_s=15)
        auto_stats = auto_sim.stats()
    return {
        "requests": count,
        "limit_rpm": rpm,
        "auto_requests_per_min": round(auto_rate, 1),
        "auto_utilisation": round(auto_rate / rpm, 4),
        "fixed_256_requests_per_min": round(fixed_rate, 1),
        "fixed_256_utilisation": round(fixed_rate / rpm, 4),
        "auto_over_fixed": round(auto_rate / fixed_rate, 3),
        "429s": auto_stats["by_status"].get("429", 0),
    }


async def wrong_key_scenario(root: Path) -> dict[str, Any]:
    lines = request_lines(200)
    keyed = ("--api-key-env", "BENCH_SIM_KEY")
    sim_env = {"BENCH_SIM_KEY": "sk-right"}
    with (
        Simulator(*keyed, env=sim_env) as locked,
        Simulator(*keyed, env=sim_env) as locked_member,
        Simulator("--latency-s", "0.5") as open_member,
    ):
        alone = Workspace(
            root,
            "wrongkey",
            endpoint_table("locked", locked.url, key_env="BENCH_KEY"),
            env={"BENCH_KEY": "sk-wrong"},
        )
        batch_id = await alone.submit(lines, "locked")
        code, _, err = await alone.cli("run", batch_id, check=False)
        pooled = Workspace(
            root,
            "wrongkey-pool",
            endpoint_table("locked", locked_member.url, key_env="BENCH_KEY")
            + endpoint_table("open", open_member.url)
            + '[pools.both]\nmembers = ["locked", "open"]\n',
            env={"BENCH_KEY": "sk-wrong"},
        )
        pool_id = await pooled.submit(lines, "both")
        pool_code, _, _ = await pooled.cli("run", pool_id, check=False)
        pool_records = await pooled.flat_results(pool_id)
        single_401s = locked.stats()["by_status"].get("401", 0)
        member_401s = locked_member.stats()["by_status"].get("401", 0)
    return {
        "requests": len(lines),
        "single_endpoint_401s": single_401s,
        "single_endpoint_exit_code": code,
        "single_endpoint_says": err.strip().splitlines()[-1] if err.strip() else "",
        "pool_member_401s": member_401s,
        "pool_exit_code": pool_code,
        "pool_succeeded": sum(r["status"] == "succeeded" for r in pool_records),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["pool", "failover", "latency", "wrongkey"])
    parser.add_argument("--requests", type=int, default=1200, help="for pool and failover")
    parser.add_argument("--latency-seconds", type=int, default=75, help="batch size, in seconds")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scenarios = {
            "pool": lambda: pool_scenario(root, options.requests),
            "failover": lambda: failover_scenario(root, options.requests),
            "latency": lambda: latency_scenario(root, options.latency_seconds),
            "wrongkey": lambda: wrong_key_scenario(root),
        }
        for name, scenario in scenarios.items():
            if options.only and name != options.only:
                continue
            started = time.monotonic()
            figures = await scenario()
            figures["bench_s"] = round(time.monotonic() - started, 1)
            print(json.dumps({"scenario": name, **figures}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
