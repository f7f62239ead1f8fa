"""Ingest speed and memory: `batchrun submit` of 100,000 and 1,000,000 lines.

Writes a file of N small requests (the shape of bench/scale.py: a system prompt and one short
user message, ~210 bytes a line), then runs `batchrun submit FILE` on a fresh SQLite file (and
with ``--postgres`` a scratch Postgres database) as a separate process under GNU time: wall
seconds, CPU seconds (user + system: the figure a loaded machine inflates least) and peak RSS.
``batchrun --version`` gives the start-up to subtract. With ``--baseline DIR`` the same runs
alternate, back to back, with the code at DIR (a worktree; its `batchrun` package is put first
on PYTHONPATH), so both see the same load. ``--reuse`` submits with ``--reuse``. Every submit
passes ``--max-requests N`` (over Anthropic's 100,000 a file needs it).

Run:  .venv/bin/python bench/ingest.py                                 (100,000 and 1,000,000)
      .venv/bin/python bench/ingest.py --sizes 100000 --repeat 5 --baseline /path/to/old/tree
The code measured is the one ``batchrun`` imports (set PYTHONPATH to a worktree to measure it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from common import BATCHRUN, scratch_postgres


def write_requests(path: Path, count: int) -> None:
    """``count`` distinct small requests, one per line."""
    with path.open("w") as stream:
        for i in range(count):
            line = {
                "custom_id": f"r{i:07d}",
                "params": {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 256,
                    "system": "You are a careful assistant.",
                    "messages": [{"role": "user", "content": f"Summarise item {i} of the list."}],
                },
            }
            stream.write(json.dumps(line) + "\n")


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of ``command``, by GNU time."""
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %U %S %M", *command], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command[1]} failed: {done.stderr[-800:]}")
    wall, user, system, peak_kb = done.stderr.strip().splitlines()[-1].split()
    return float(wall), float(user) + float(system), int(peak_kb) / 1024


def span(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100000,1000000", help="lines, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="also a scratch Postgres database")
    parser.add_argument("--baseline", help="a worktree whose code runs alternately, for an A/B")
    parser.add_argument("--reuse", action="store_true", help="submit with --reuse")
    args = parser.parse_args()
    codes = {"this": os.environ.get("PYTHONPATH", "")}
    if args.baseline:
        codes["baseline"] = args.baseline
    print(
        f"{'code':<9} {'backend':<9} {'lines':>10} {'wall s':>20} {'CPU s':>20} "
        f"{'peak RSS MB':>22} {'load':>5}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        (tmp / "none.toml").write_text("")
        for count in (int(size) for size in args.sizes.split(",")):
            source = tmp / f"requests-{count}.jsonl"
            write_requests(source, count)
            backends: list[tuple[str, bool]] = [("sqlite", False)]
            if args.postgres:
                backends.append(("postgres", True))
            for backend, postgres in backends:
                figures: dict[str, list[tuple[float, float, float]]] = {code: [] for code in codes}
                loads = []
                for run in range(args.repeat):
                    for code, path in codes.items():
                        database: AbstractContextManager[str] = (
                            scratch_postgres()
                            if postgres
                            else nullcontext(f"sqlite:///{tmp / f'{code}-{count}-{run}.db'}")
                        )
                        with database as url:
                            env = {
                                **os.environ,
                                "PYTHONPATH": path,
                                "BATCHRUN_DATABASE_URL": url,
                                "BATCHRUN_CONFIG": str(tmp / "none.toml"),
                            }
                            subprocess.run(
                                [BATCHRUN, "list"], env=env, check=True, capture_output=True
                            )
                            loads.append(os.getloadavg()[0])
                            command = [
                                BATCHRUN,
                                "submit",
                                str(source),
                                "--max-requests",
                                str(count),
                            ]
                            if args.reuse:
                                command.append("--reuse")
                            figures[code].append(timed(command, env))
                        if not postgres:
                            for suffix in ("", "-wal", "-shm"):
                                Path(f"{tmp / f'{code}-{count}-{run}.db'}{suffix}").unlink(
                                    missing_ok=True
                                )
                for code, runs in figures.items():
                    print(
                        f"{code:<9} {backend:<9} {count:>10,} "
                        f"{span([r[0] for r in runs]):>20} {span([r[1] for r in runs]):>20} "
                        f"{span([r[2] for r in runs]):>22} {statistics.median(loads):>5.1f}",
                        flush=True,
                    )
        env = {**os.environ, "BATCHRUN_CONFIG": str(tmp / "none.toml")}
        version = [timed([BATCHRUN, "--version"], env) for _ in range(args.repeat)]
        print(
            f"`batchrun --version` (start-up): wall {span([r[0] for r in version])} s, "
            f"CPU {span([r[1] for r in version])} s, peak RSS {span([r[2] for r in version])} MB"
        )


if __name__ == "__main__":
    main()
