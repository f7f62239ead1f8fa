"""How fast commands start: `batchrun --help`, `--version` and `status` on a small database.

Each command runs REPEAT times as a fresh process; the script prints the median and the best
wall time, against the interpreter's own start-up (`python -c pass`) measured in the same run,
and checks the targets: --help and --version ≤ 0.25 s, status ≤ 0.4 s. Then, as evidence,
`python -X importtime` of each command: the slowest imports, and which heavy packages the
command loaded at all.

Commands run as from a pip-installed batchrun, whose modules pip compiles to bytecode: the
script lets Python write batchrun's bytecode (into a temporary PYTHONPYCACHEPREFIX, so the
checkout stays clean, even where PYTHONDONTWRITEBYTECODE is set) and warms it before timing.

    .venv/bin/python bench/startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BATCHRUN

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "requests.jsonl"
TARGETS_S = {"--help": 0.25, "--version": 0.25, "status": 0.40}
HEAVY = ("sqlalchemy", "alembic", "httpx", "pydantic", "rich", "uvicorn", "psycopg")
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def import_evidence(args: list[str], env: dict[str, str]) -> tuple[list[tuple[int, str]], set[str]]:
    """The top-level imports by cumulative µs, and the heavy packages loaded."""
    ran = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "batchrun", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    tops: list[tuple[int, str]] = []
    loaded: set[str] = set()
    for line in ran.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match is None:
            continue
        cumulative, indent, module = int(match.group(2)), match.group(3), match.group(4)
        loaded.add(module.split(".")[0])
        if len(indent) == 1:
            tops.append((cumulative, module))
    return sorted(tops, reverse=True)[:6], {m for m in HEAVY if m in loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    repeat = parser.parse_args().repeat

    with tempfile.TemporaryDirectory() as home:
        skipped = ("BATCHRUN_", "ANTHROPIC_", "PYTHONDONTWRITEBYTECODE")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skipped)}
        env |= {
            "HOME": home,
            "BATCHRUN_DATABASE_URL": f"sqlite:///{home}/small.db",
            "PYTHONPYCACHEPREFIX": f"{home}/pycache",
        }
        batch_id = subprocess.run(
            [BATCHRUN, "submit", str(SAMPLES), "--endpoint", "simulator"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        subprocess.run([BATCHRUN, "run", batch_id, "-q"], env=env, check=True)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "--help": [BATCHRUN, "--help"],
            "--version": [BATCHRUN, "--version"],
            "status": [BATCHRUN, "status", batch_id],
        }
        for args in commands.values():  # writes the bytecode a pip install would have
            timed(args, env)
        times = {name: [timed(args, env) for _ in range(repeat)] for name, args in commands.items()}
        base = statistics.median(times["python -c pass"])
        print(f"{repeat} runs each; wall seconds (median, best); × interpreter start-up")
        print(f"{'command':<16} {'median':>8} {'best':>8} {'× python':>9} {'target':>8}")
        for name, samples in times.items():
            median = statistics.median(samples)
            target = TARGETS_S.get(name)
            verdict = "" if target is None else ("met" if median <= target else "NOT met")
            print(
                f"{name:<16} {median:8.3f} {min(samples):8.3f} {median / base:9.1f} "
                + (f"{target:7.2f}s {verdict}" if target else "")
            )
        print()
        for name, args in (
            ("--help", ["--help"]),
            ("--version", ["--version"]),
            ("status", ["status", batch_id]),
        ):
            tops, heavy = import_evidence(args, env)
            listed = ", ".join(sorted(heavy)) or "none"
            print(f"-X importtime, {name}: heavy packages loaded: {listed}")
            for cumulative_us, module in tops:
                print(f"    {cumulative_us / 1000:7.1f} ms  {module}")


if __name__ == "__main__":
    main()
