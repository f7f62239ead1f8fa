"""Paying less: the batch lane, kill -9 during it, provider-expired requests, reuse, and
prompt-cache groups, each against a baseline in the same run.

A `batchrun simulate` process on 127.0.0.1 plays the API (Messages and Message Batches, with
prompt caching); the real CLI does the work, in its own processes. Figures come from
`batchrun status --json`, `batchrun results` and the simulator's own counters (which count
every request billed, by the fingerprint of its params, across both lanes).

1. lanes: 2,000 requests in the batch lane and the same 2,000 in real time: cost ratio,
   and whether the exports carry the same content in the same order.
2. kills: 2,000 requests in the batch lane, 200 per provider batch, the run killed with
   SIGKILL at random moments (at least 10 times; the phase each kill hit is read from the
   database afterwards), resumed each time: requests paid twice, requests lost.
3. expired: 1,000 requests, the provider expiring 10 % of them, a deadline 15 minutes
   away: how many ended in real time, and the latest result against the deadline.
4. reuse: the file of (1) submitted again with --reuse: requests sent, export identical;
   a file of 500 lines with 100 distinct params: requests sent.
5. cache: 1,000 requests sharing a 2,000-token system prompt with a cache_control
   breakpoint, then 20 prompts of 50 requests each (the file in prompt order), answers taking
   1-3 s, at 3,000 requests/min: cache hit rate, run time and cost with batchrun's grouping,
   and without (the same batch with its wait_for cleared in the database).

Run:  .venv/bin/python bench/paying_less.py   (about 6 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import BATCHRUN, Simulator

SYSTEM_PROMPT_WORDS = 1_600  # about 2,000 tokens by the simulator's count


class Workspace:
    """A scratch folder with a config file naming the simulator, and the CLI run there."""

    def __init__(self, root: Path, url: str, *, per_batch: int = 100_000) -> None:
        self.root = root
        self.db = root / "batchrun.sqlite"
        (root / "batchrun.toml").write_text(
            f'[endpoints.sim]\nbase_url = "{url}"\nauth = "none"\nbatch_api = "anthropic"\n'
            f"batch_max_requests = {per_batch}\ntimeout_s = 5\n"
        )
        self.env = {
            **os.environ,
            "BATCHRUN_DATABASE_URL": f"sqlite:///{self.db}",
            "BATCHRUN_CONFIG": str(root / "batchrun.toml"),
        }

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [BATCHRUN, *args], env=self.env, cwd=self.root, capture_output=True, text=True
        )
        if check and done.returncode not in (0, 3):
            raise RuntimeError(f"batchrun {' '.join(args)}: {done.returncode}\n{done.stderr}")
        return done

    def submit(self, lines: list[dict[str, Any]], *args: str) -> str:
        path = self.root / f"requests-{time.monotonic_ns()}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return self.cli("submit", str(path), "--endpoint", "sim", *args).stdout.strip()

    def status(self, batch_id: str) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.cli("status", batch_id, "--json").stdout)
        return parsed

    def export(self, batch_id: str) -> list[dict[str, Any]]:
        out = self.cli("results", batch_id).stdout
        return [json.loads(line) for line in out.splitlines()]

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db) as conn:
            return list(conn.execute(statement))


def requests(count: int, *, prefix: str = "q", system: str | None = None) -> list[dict[str, Any]]:
    made = []
    for i in range(count):
        params: dict[str, Any] = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 60,
            "messages": [{"role": "user", "content": f"{prefix} question number {i}"}],
        }
        if system is not None:
            params["system"] = [
                {"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}
            ]
        made.append({"custom_id": f"{prefix}{i}", "params": params})
    return made


def same_content(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x["custom_id"] != y["custom_id"] or x["result"]["type"] != y["result"]["type"]:
            return False
        if x["result"].get("message", {}).get("content") != y["result"].get("message", {}).get(
            "content"
        ):
            return False
    return True


def lanes_and_reuse(root: Path) -> None:
    with Simulator("--batch-processing-s", "3") as simulator:
        ws = Workspace(root / "lanes", simulator.url)
        lines = requests(2_000)
        batch = ws.submit(lines, "--lane", "batch")
        ws.cli("run", batch, "--poll-interval", "1s", "--quiet")
        realtime = ws.submit(lines)
        ws.cli("run", realtime, "--quiet")
        b, r = ws.status(batch), ws.status(realtime)
        batch_export, realtime_export = ws.export(batch), ws.export(realtime)
        print(
            f"lanes: batch lane {b['request_counts']['succeeded']:,}/2,000 succeeded, "
            f"cost ${b['cost_usd']:.4f} = {b['cost_usd'] / r['cost_usd'] * 100:.1f} % of real "
            f"time (${r['cost_usd']:.4f}); exports same content and order: "
            f"{same_content(batch_export, realtime_export)}; "
            f"provider batches {len(b['provider_batches'])}"
        )
        before = simulator.stats()
        reused = ws.submit(lines, "--reuse")
        ws.cli("run", reused, "--quiet")
        after = simulator.stats()
        sent = after["received"] - before["received"]
        created = after["batches_created"] - before["batches_created"]
        identical = [json.dumps(x) for x in ws.export(reused)] == [
            json.dumps(x) for x in batch_export
        ]
        print(
            f"reuse: resubmitted 2,000 with --reuse: {sent} sent, {created} provider batches, "
            f"export identical to the first batch's: {identical}; cost "
            f"${ws.status(reused)['cost_usd']:.4f}"
        )
        dup_lines = [
            {"custom_id": f"d{i}", "params": requests(100, prefix="dup")[i % 100]["params"]}
            for i in range(500)
        ]
        before = simulator.stats()
        dups = ws.submit(dup_lines, "--reuse")
        ws.cli("run", dups, "--quiet")
        sent = simulator.stats()["received"] - before["received"]
        print(
            f"reuse: 500 lines with 100 distinct params: {sent} sent, "
            f"{ws.status(dups)['request_counts']['succeeded']} succeeded"
        )


# What the database shows while the run is in each phase of the batch lane.
PHASE_QUERIES = {
    # An intent row: its create is about to go out, or is out without an answer yet.
    "create": "SELECT count(*) FROM provider_batches WHERE state = 'intent'",
    # A provider batch created and still processing: the run polls it.
    "poll": "SELECT count(*) FROM provider_batches WHERE state = 'created' "
    "AND status = 'in_progress'",
    # A provider batch the provider says has ended, not yet closed: its results are read.
    "import": "SELECT count(*) FROM provider_batches WHERE state = 'created' AND status = 'ended'",
}


def kills(root: Path, count: int, rng: random.Random) -> None:
    with Simulator("--batch-processing-s", "4") as simulator:
        ws = Workspace(root / "kills", simulator.url, per_batch=100)
        batch = ws.submit(requests(2_000, prefix="k"), "--lane", "batch")
        phases: Counter[str] = Counter()
        missed: Counter[str] = Counter()
        attempt = 0
        while sum(phases.values()) < count and attempt < count * 4:
            target = ("create", "poll", "import")[attempt % 3]
            attempt += 1
            process = subprocess.Popen(
                [BATCHRUN, "run", batch, "--poll-interval", "0.5s", "--quiet"],
                env=ws.env,
                cwd=ws.root,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            hit = False
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    hit = ws.sql(PHASE_QUERIES[target])[0][0] > 0
                except sqlite3.OperationalError:
                    hit = False  # the schema is being made, or the database is busy
                if hit:
                    # Somewhere inside the phase, not always at its first instant.
                    time.sleep(rng.uniform(0.0, 0.02))
                    break
                time.sleep(0.002)
            if process.poll() is None:
                process.kill()
                process.wait()
                if hit:
                    phases[target] += 1
                else:
                    missed[target] += 1
            else:
                missed[target] += 1
        ws.cli("run", batch, "--poll-interval", "0.5s", "--quiet")
        final = ws.status(batch)
        stats = simulator.stats()
        unique = len({line["custom_id"] for line in ws.export(batch)})
        print(
            f"kills: {sum(phases.values())} SIGKILLs by phase {dict(phases)} (runs that "
            f"ended or timed out before the phase: {dict(missed)}), then a last run: "
            f"{final['request_counts']['succeeded']:,}/2,000 succeeded, {unique:,} distinct "
            f"results, paid twice {stats['paid_twice']}, billed {stats['billed_total']:,}, "
            f"provider batches created {stats['batches_created']}, real-time sends "
            f"{stats['received']}"
        )


def expired(root: Path) -> None:
    with Simulator("--batch-processing-s", "3", "--batch-expired-rate", "0.1") as simulator:
        ws = Workspace(root / "expired", simulator.url)
        batch = ws.submit(requests(1_000, prefix="e"), "--lane", "batch", "--expires-in", "15m")
        ws.cli("run", batch, "--poll-interval", "1s", "--quiet", "--rpm", "600")
        final = ws.status(batch)
        flat = [
            json.loads(line)
            for line in ws.cli("results", batch, "--format", "flat").stdout.splitlines()
        ]
        lanes = Counter(row["lane"] for row in flat)
        latest = max(row["completed_at"] for row in flat)
        print(
            f"expired: provider expired {simulator.stats()['received']} of 1,000; "
            f"{final['request_counts']['succeeded']:,} succeeded ({dict(lanes)}); last result "
            f"{latest}, deadline {final['expires_at']}; paid twice "
            f"{simulator.stats()['paid_twice']}"
        )


def cache(root: Path) -> None:
    for groups in (1, 20):
        figures = []
        for grouped in (True, False):
            # Answers take 1-3 s, so without grouping the requests of a prompt sent before
            # its first answer all write the cache instead of reading it.
            with Simulator(
                "--latency-s", "1", "--latency-jitter-s", "2", "--seed", "5"
            ) as simulator:
                ws = Workspace(root / f"cache-{groups}-{grouped}", simulator.url)
                lines = []
                for group in range(groups):
                    system = " ".join(f"rule{group}-{i % 97}" for i in range(SYSTEM_PROMPT_WORDS))
                    lines += requests(1_000 // groups, prefix=f"c{group}x", system=system)
                batch = ws.submit(lines)
                if not grouped:
                    ws.sql("UPDATE requests SET wait_for = NULL")
                started = time.monotonic()
                ws.cli("run", batch, "--quiet", "--rpm", "3000")
                elapsed = time.monotonic() - started
                status = ws.status(batch)
                usage = status["usage"]
                read = usage["cache_read_input_tokens"]
                written = usage["cache_creation_input_tokens"]
                rate = read / (read + written) if read + written else 0.0
                figures.append((grouped, rate, elapsed, status["cost_usd"]))
        for grouped, rate, elapsed, cost in figures:
            name = "grouped" if grouped else "not grouped"
            print(
                f"cache: {groups} prompt(s) x {1_000 // groups} requests, {name}: hit rate "
                f"{rate * 100:.1f} %, run {elapsed:.1f} s, cost ${cost:.4f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", choices=["lanes", "kills", "expired", "cache"], default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for name in ("lanes", "kills", "expired", "cache"):
            (root / name).mkdir()
        for groups in (1, 20):
            for grouped in (True, False):
                (root / f"cache-{groups}-{grouped}").mkdir()
        if args.only in (None, "lanes"):
            lanes_and_reuse(root)
        if args.only in (None, "kills"):
            kills(root, args.kills, rng)
        if args.only in (None, "expired"):
            expired(root)
        if args.only in (None, "cache"):
            cache(root)


if __name__ == "__main__":
    main()
