"""`status` as a batch grows: 100,000 and 1,000,000 requests, SQLite and Postgres.

Each database gets a batch of N requests and a one-request batch beside it. The N rows are
made in the database by one ``INSERT ... SELECT`` over a number series (a recursive CTE on
SQLite, ``generate_series`` on Postgres), not through the store: 60 % succeeded with a result
row and its tokens, 10 % errored, 10 % canceled, 20 % queued. The batch's counters, where the
schema has them, are then set from the rows: by the store's own recount
(``batchrun.store.counters.recount_batches``) where the code has it, else by the statement of
migration 0012's backfill. Figures, medians of ``--repeat`` runs:

- ``Batches.get`` in this process (what status, list, retrieve and the progress line read);
- ``Client.status`` in this process (everything ``status`` reads and computes, start-up
  excluded: the figure the issue's "beyond start-up" target is about);
- ``batchrun status BATCH`` of the big batch, and of the one-request batch in the same
  database: the difference is what `status` spends beyond start-up on the batch's size;
- ``batchrun --version``: the interpreter and the CLI alone;
- with ``--report``: ``batchrun report BATCH -o FILE`` of the big batch, once, its wall time
  and peak RSS (GNU time): the report may aggregate, in bounded memory.

Run:  .venv/bin/python bench/status.py --postgres                  (both sizes, both backends)
      .venv/bin/python bench/status.py --sizes 100000               (SQLite, 100,000 only)
The code measured is the one ``batchrun`` and this interpreter import (set PYTHONPATH to a
worktree to measure it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

from common import BATCHRUN, scratch_postgres
from sqlalchemy import inspect, text

from batchrun.records import NewBatch
from batchrun.store.store import Store

PARAMS = (
    '{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"%s"}]}'
)
BODY = '{"type":"message","content":[{"type":"text","text":"%s"}]}'


def numbers(dialect: str, count: int) -> tuple[str, str]:
    """(a WITH clause or "", a FROM item) giving i = 1..count."""
    if dialect == "sqlite":
        return (
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) ",
            "n",
        )
    return "", f"generate_series(1, {count}) AS n(i)"


def make_batch(store: Store, batch_id: str, count: int) -> None:
    """A batch of ``count`` requests in the mix the module docstring gives."""
    now = datetime.now(UTC)
    store.batches.create(
        NewBatch(
            id=batch_id,
            name=None,
            endpoint="simulator",
            source="bench",
            created_at=now,
            expires_at=now.replace(year=now.year + 1),
        ),
        iter(()),
    )
    engine = store.engine
    with_clause, source = numbers(engine.dialect.name, count)
    concat = "||"
    state = (
        "CASE WHEN i % 10 < 6 THEN 'succeeded' WHEN i % 10 = 6 THEN 'errored' "
        "WHEN i % 10 = 7 THEN 'canceled' ELSE 'queued' END"
    )
    prompt = "x" * 180
    with engine.begin() as conn:
        conn.execute(
            text(
                f"{with_clause}INSERT INTO requests (batch_id, line_no, custom_id, model, "
                "max_tokens, params, state, attempts, failures, lane) "
                f"SELECT :b, i, 'r' {concat} i, 'claude-sonnet-4-5', 256, :params, {state}, "
                f"1, 0, 'realtime' FROM {source}"
            ),
            {"b": batch_id, "params": PARAMS % prompt},
        )
        conn.execute(
            text(
                "INSERT INTO results (request_id, batch_id, custom_id, result_type, attempts, "
                "completed_at, input_tokens, output_tokens, cache_creation_input_tokens, "
                "cache_read_input_tokens, body) "
                "SELECT r.id, r.batch_id, r.custom_id, r.state, 1, b.created_at, "
                "CASE WHEN r.state = 'succeeded' THEN 120 END, "
                "CASE WHEN r.state = 'succeeded' THEN 60 END, 0, "
                "CASE WHEN r.state = 'succeeded' THEN 10 END, :body "
                "FROM requests r JOIN batches b ON b.id = r.batch_id "
                "WHERE r.batch_id = :b AND r.state IN ('succeeded', 'errored', 'canceled')"
            ),
            {"b": batch_id, "body": BODY % ("y" * 400)},
        )
        conn.execute(
            text("UPDATE batches SET request_count = :n WHERE id = :b"), {"n": count, "b": batch_id}
        )
        columns = {column["name"] for column in inspect(conn).get_columns("batches")}
        try:
            from batchrun.store.counters import recount_batches
        except ImportError:  # the code before the status counters
            recount_batches = None
        if recount_batches is not None:
            recount_batches(conn, [batch_id])
        elif "n_processing" in columns:
            counts = ", ".join(
                f"{name} = (SELECT count(*) FROM requests WHERE batch_id = :b AND {where})"
                for name, where in (
                    ("n_processing", "state IN ('queued', 'running', 'provider')"),
                    ("n_succeeded", "state = 'succeeded'"),
                    ("n_errored", "state = 'errored'"),
                    ("n_canceled", "state = 'canceled'"),
                    ("n_expired", "state = 'expired'"),
                )
            )
            sums = ", ".join(
                f"sum_{name} = (SELECT coalesce(sum({name}), 0) FROM results WHERE batch_id = :b)"
                for name in (
                    "input_tokens",
                    "output_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                )
            )
            conn.execute(
                text(f"UPDATE batches SET {counts}, {sums} WHERE id = :b"), {"b": batch_id}
            )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))


def wall_s(command: list[str], env: dict[str, str], repeat: int) -> float:
    """Median wall seconds of ``command`` over ``repeat`` runs."""
    walls = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls)


def get_ms(store: Store, batch_id: str, repeat: int) -> float:
    """Median milliseconds of ``Batches.get`` in this process."""
    store.batches.get(batch_id)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        store.batches.get(batch_id)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def status_ms(url: str, batch_id: str, env: dict[str, str], repeat: int) -> float:
    """Median milliseconds of ``Client.status`` in this process (after one warm-up call)."""
    from batchrun import Client

    with Client(url, env=env) as client:
        client.status(batch_id)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            client.status(batch_id)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def databases(
    tmp: Path, postgres: bool, count: int
) -> Iterator[tuple[str, AbstractContextManager[str]]]:
    """A fresh database per backend for one size."""
    yield "sqlite", nullcontext(f"sqlite:///{tmp / f'status-{count}.db'}")
    if postgres:
        yield "postgres", scratch_postgres()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100000,1000000", help="batch sizes, comma-separated")
    parser.add_argument("--postgres", action="store_true", help="also a scratch Postgres database")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--report", action="store_true", help="also time `batchrun report`")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(
        f"{'backend':<9} {'requests':>10} {'build s':>8} {'get ms':>7} {'in-proc ms':>10} "
        f"{'status s':>9} "
        f"{'status 1 s':>10} {'beyond s':>9} {'--version s':>11} {'load':>5}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        (tmp / "none.toml").write_text("")
        for count in sizes:
            for backend, database in databases(tmp, args.postgres, count):
                with database as url:
                    store = Store.open(url)
                    try:
                        big, one = f"big{count}", f"one{count}"
                        started = time.perf_counter()
                        make_batch(store, big, count)
                        built = time.perf_counter() - started
                        make_batch(store, one, 1)
                        got = get_ms(store, big, args.repeat)
                    finally:
                        store.close()
                    env = {
                        **os.environ,
                        "BATCHRUN_DATABASE_URL": url,
                        "BATCHRUN_CONFIG": str(tmp / "none.toml"),
                    }
                    in_process = status_ms(url, big, env, args.repeat)
                    wall_s([BATCHRUN, "status", big], env, 1)  # warm the caches
                    load = os.getloadavg()[0]
                    version = wall_s([BATCHRUN, "--version"], env, args.repeat)
                    status_big = wall_s([BATCHRUN, "status", big], env, args.repeat)
                    status_one = wall_s([BATCHRUN, "status", one], env, args.repeat)
                    print(
                        f"{backend:<9} {count:>10,} {built:>8.1f} {got:>7.1f} {in_process:>10.1f} "
                        f"{status_big:>9.3f} "
                        f"{status_one:>10.3f} {status_big - status_one:>9.3f} {version:>11.3f} "
                        f"{load:>5.1f}",
                        flush=True,
                    )
                    if args.report:
                        page = tmp / "report.html"
                        done = subprocess.run(
                            [
                                "/usr/bin/time",
                                "-f",
                                "%e %M",
                                BATCHRUN,
                                "report",
                                big,
                                "-o",
                                str(page),
                            ],
                            env=env,
                            check=True,
                            capture_output=True,
                            text=True,
                        )
                        wall, peak_kb = done.stderr.strip().splitlines()[-1].split()
                        print(
                            f"  report of {count:,} on {backend}: {float(wall):.1f} s, "
                            f"peak RSS {int(peak_kb) / 1024:.0f} MB",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
