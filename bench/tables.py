"""Tables: `submit TABLE --template` against `submit FILE.jsonl` of the same requests, in time
and in memory, at two sizes (memory should not grow with the table beyond the custom_id map
that both keep to report duplicates).

For each size N, in one run, back to back on fresh SQLite files, each through the real CLI
(a separate process; GNU time measures its peak RSS):

- baseline: a JSONL file of N requests (what a script would write from the table);
- CSV: the same N rows as a CSV with a template rendering the same requests;
- Parquet: the same rows as Parquet (record batches of 1,024 rows).

Run:  .venv/bin/python bench/tables.py                    (100,000 and 400,000 rows)
      .venv/bin/python bench/tables.py --rows 20000 80000  (quicker)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import BATCHRUN

TEMPLATE = """\
model = "claude-sonnet-4-5"
max_tokens = 256
system = "You triage support tickets."
user = "Ticket {{ ticket_id }}: {{ subject }}\\n\\n{{ body }}"
id = "t{{ ticket_id }}"
"""


def row(i: int) -> dict[str, str]:
    return {
        "ticket_id": f"{i:07d}",
        "subject": f"Cannot log in, attempt {i % 17}",
        "body": f"Since the update I get error {i % 500} when I open the app. " * 3,
    }


def request(r: dict[str, str]) -> dict[str, object]:
    return {
        "custom_id": f"t{r['ticket_id']}",
        "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "system": "You triage support tickets.",
            "messages": [
                {
                    "role": "user",
                    "content": f"Ticket {r['ticket_id']}: {r['subject']}\n\n{r['body']}",
                }
            ],
        },
    }


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS in MB of a command. On a
    machine shared with other work the CPU seconds are the steadier figure."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M %U %S", *command], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed: {done.stderr[-800:]}")
    peak_kb, user_s, system_s = done.stderr.strip().splitlines()[-1].split()
    return elapsed, float(user_s) + float(system_s), int(peak_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 400_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "t.toml").write_text(TEMPLATE)
        print(f"{'rows':>9} {'input':<8} {'wall s':>7} {'CPU s':>6} {'rows/CPU s':>10} peak RSS MB")
        for count in args.rows:
            jsonl, table, parquet = root / "r.jsonl", root / "t.csv", root / "t.parquet"
            with jsonl.open("w") as lines, table.open("w", newline="") as out:
                writer = csv.DictWriter(out, fieldnames=["ticket_id", "subject", "body"])
                writer.writeheader()
                for i in range(count):
                    r = row(i)
                    writer.writerow(r)
                    lines.write(json.dumps(request(r)) + "\n")
            import pyarrow as pa
            import pyarrow.csv as pacsv
            import pyarrow.parquet as pq

            pq.write_table(
                pacsv.read_csv(
                    table,
                    convert_options=pacsv.ConvertOptions(column_types={"ticket_id": pa.string()}),
                ),
                parquet,
            )
            cases = [
                ("jsonl", [str(jsonl)]),
                ("csv", [str(table), "--template", str(root / "t.toml")]),
                ("parquet", [str(parquet), "--template", str(root / "t.toml")]),
            ]
            for name, submit_args in cases:
                db = root / f"{name}-{count}.db"
                env = {**os.environ, "BATCHRUN_DATABASE_URL": f"sqlite:///{db}"}
                subprocess.run(
                    [BATCHRUN, "db", "upgrade"], env=env, check=True, capture_output=True
                )
                seconds, cpu_s, peak_mb = timed(
                    [
                        BATCHRUN,
                        "submit",
                        *submit_args,
                        "--endpoint",
                        "simulator",
                        "--max-requests",
                        str(count),
                    ],
                    env,
                )
                print(
                    f"{count:>9,} {name:<8} {seconds:>7.1f} {cpu_s:>6.1f} "
                    f"{count / cpu_s:>10,.0f} {peak_mb:>11.0f}"
                )
                db.unlink()


if __name__ == "__main__":
    main()
