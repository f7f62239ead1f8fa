"""Long generations behind a proxy that cuts silent connections.

A `batchrun simulate` process on 127.0.0.1 plays an API behind a proxy with a 5 s idle
timeout: a non-streamed answer slower than 5 s is dropped after 5 s without a byte, a
streamed one survives on its events and pings. 200 requests with `max_tokens` 32,000 get
2,000-token answers that take 10-20 s (2 s + up to 10 s before the first token, then 4 ms a
token). The real CLI runs them twice, at the same time, each against its own simulator:

- streamed: batchrun's defaults (32,000 > 21,333, so every request is streamed);
- baseline: the same, with streaming turned off (`stream_threshold_tokens` = 10^9 in a
  config file) and `--max-runtime 90s`: every attempt is cut after 5 s and retried, and
  requests end errored once their 8 attempts are spent; the run is stopped after 90 s,
  because with 8 attempts and back-offs of up to 60 s the rest would take many minutes
  more without changing the figures.

It prints, from `batchrun results` and the simulators' own stats: requests succeeded and
errored, sends per request, and whether every stored message equals the Message the
simulator logged for it (matched by message id).

Run:  .venv/bin/python bench/streaming.py   (about 2 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import BATCHRUN, Simulator

REQUESTS = 200
MAX_TOKENS = 32_000
OUTPUT_TOKENS = 2_000
PER_TOKEN_S = 0.004
LATENCY_S = 2.0
JITTER_S = 10.0
IDLE_TIMEOUT_S = 5.0
BASELINE_RUNTIME = "90s"


def start_simulator() -> Simulator:
    return Simulator(
        "--output-tokens",
        str(OUTPUT_TOKENS),
        "--latency-s",
        str(LATENCY_S),
        "--latency-jitter-s",
        str(JITTER_S),
        "--latency-per-output-token-s",
        str(PER_TOKEN_S),
        "--idle-timeout-s",
        str(IDLE_TIMEOUT_S),
        "--log-messages",
        "--log-size",
        str(REQUESTS * 10),
        "--seed",
        "7",
    )


def write_requests(path: Path) -> None:
    with path.open("w") as stream:
        for i in range(REQUESTS):
            line = {
                "custom_id": f"r{i:04d}",
                "params": {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": MAX_TOKENS,
                    "messages": [{"role": "user", "content": f"Write long essay number {i}."}],
                },
            }
            stream.write(json.dumps(line) + "\n")


def measure(
    label: str, workdir: Path, config: str | None, run_args: list[str], out: dict[str, Any]
) -> None:
    simulator = start_simulator()
    env = {
        **os.environ,
        "BATCHRUN_DATABASE_URL": f"sqlite:///{workdir / label}.db",
        "ANTHROPIC_BASE_URL": simulator.url,
        "ANTHROPIC_API_KEY": "sk-bench",
        "HOME": str(workdir),
    }
    env.pop("BATCHRUN_CONFIG", None)
    if config is not None:
        config_file = workdir / f"{label}.toml"
        config_file.write_text(config)
        env["BATCHRUN_CONFIG"] = str(config_file)
    requests = workdir / "requests.jsonl"
    try:
        batch_id = subprocess.run(
            [BATCHRUN, "submit", str(requests)], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        started = time.monotonic()
        run = subprocess.run(
            [BATCHRUN, "run", batch_id, *run_args],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        run_s = time.monotonic() - started
        exported = subprocess.run(
            [BATCHRUN, "results", batch_id, "--partial"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        stats = simulator.stats()
    finally:
        simulator.stop()
    results = [json.loads(line) for line in exported.splitlines()]
    logged = {
        json.loads(entry["message"])["id"]: json.loads(entry["message"])
        for entry in stats["log"]
        if entry["message"] is not None
    }
    stored = [r["result"]["message"] for r in results if r["result"]["type"] == "succeeded"]
    equal = sum(1 for message in stored if logged.get(message["id"]) == message)
    out[label] = {
        "args": run_args,
        "exit": run.returncode,
        "run_s": run_s,
        "results": Counter(r["result"]["type"] for r in results),
        "errors": Counter(
            r["result"]["error"]["error"]["message"].split("; last failure: ")[-1][:60]
            for r in results
            if r["result"]["type"] == "errored"
        ),
        "received": stats["received"],
        "distinct": stats["distinct_bodies"],
        "duplicates": stats["duplicate_receptions"],
        "streamed": stats.get("streamed", 0),
        "by_status": stats["by_status"],
        "equal": equal,
        "stored": len(stored),
        "logged": len(logged),
    }


def report(figures: dict[str, Any]) -> None:
    for label, f in figures.items():
        print(f"== {label}")
        args = " ".join(f["args"]) or "(defaults)"
        print(f"   batchrun run {args}: exit {f['exit']}, {f['run_s']:.0f} s")
        unfinished = REQUESTS - sum(f["results"].values())
        print(
            f"   results: {f['results'].get('succeeded', 0)} succeeded, "
            f"{f['results'].get('errored', 0)} errored, {unfinished} unfinished, of {REQUESTS}"
        )
        for reason, count in f["errors"].most_common(3):
            print(f"     {count} x {reason}")
        per_request = f["received"] / REQUESTS
        print(
            f"   sends: {f['received']} received by the simulator for {f['distinct']} distinct "
            f"bodies ({per_request:.2f} per request, {f['duplicates']} resends); "
            f"{f['streamed']} streamed"
        )
        print(f"   simulator answers: {dict(sorted(f['by_status'].items()))}")
        print(
            f"   stored messages equal to the simulator's final message: "
            f"{f['equal']} of {f['stored']} stored ({f['logged']} logged by the simulator)"
        )
    streamed = figures["streamed"]
    ok = (
        streamed["results"].get("succeeded", 0) == REQUESTS
        and streamed["received"] == streamed["distinct"] == REQUESTS
        and streamed["equal"] == REQUESTS
    )
    print(f"\ntarget: all {REQUESTS} succeed, one send each, stored == simulator's: ", end="")
    print("PASS" if ok else "FAIL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    started = time.monotonic()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="batchrun-bench-") as tmp:
        workdir = Path(tmp)
        write_requests(workdir / "requests.jsonl")
        runs: dict[str, tuple[str | None, list[str]]] = {
            "streamed": (None, []),
            "baseline": (
                "[endpoints.anthropic]\nstream_threshold_tokens = 1000000000\n",
                ["--max-runtime", BASELINE_RUNTIME],
            ),
        }
        threads = [
            threading.Thread(target=measure, args=(label, workdir, config, run_args, figures))
            for label, (config, run_args) in runs.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    report({label: figures[label] for label in runs})
    print(
        f"(answers {LATENCY_S + OUTPUT_TOKENS * PER_TOKEN_S:.0f}-"
        f"{LATENCY_S + JITTER_S + OUTPUT_TOKENS * PER_TOKEN_S:.0f} s, simulator idle timeout "
        f"{IDLE_TIMEOUT_S:g} s; ran {time.monotonic() - started:.0f} s)"
    )
    if args.json:
        print(json.dumps(figures, indent=2, default=dict))


if __name__ == "__main__":
    main()
