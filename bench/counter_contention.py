"""Do Postgres writers on one batch wait for each other on its counters?

Every group commit adds to its batch's counters (the ``batches`` row, and the ``batch_usage``
row of its model) in the transaction that writes the results, so two workers recording
results of one batch at the same moment take the same row locks and the second waits until
the first commits. This bench measures what that costs: W threads, each with its own store
(its own connections, as separate workers have), claim and record groups of G requests as
fast as they can, either all on ONE batch or each on a batch of its own, on a scratch
Postgres database. It prints group commits per second and the median and 95th-percentile
time of the recording transaction for both, back to back.

Run:  .venv/bin/python bench/counter_contention.py --writers 4 --groups 200
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta

from common import scratch_postgres

from batchrun.records import FinishedRequest, NewBatch, NewRequest, Usage
from batchrun.store.store import Store

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def make_batch(store: Store, batch_id: str, count: int) -> None:
    store.batches.create(
        NewBatch(
            id=batch_id,
            name=None,
            endpoint="simulator",
            source="bench",
            created_at=NOW,
            expires_at=NOW + timedelta(days=1),
        ),
        (
            NewRequest(
                line_no=i,
                custom_id=f"r{i}",
                model="claude-sonnet-4-5",
                max_tokens=16,
                params_json='{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[]}',
            )
            for i in range(1, count + 1)
        ),
    )


def writer(url: str, batch_id: str, owner: str, groups: int, size: int, out: list[float]) -> None:
    store = Store.open(url)
    try:
        for _ in range(groups):
            claimed = store.leases.claim(
                owner=owner, batch_ids=[batch_id], limit=size, now=NOW, lease_s=600
            )
            if not claimed:
                return
            finished = [
                FinishedRequest(
                    request_id=item.id,
                    batch_id=batch_id,
                    custom_id=item.custom_id,
                    result_type="succeeded",
                    attempts=1,
                    completed_at=NOW,
                    http_status=200,
                    model="claude-sonnet-4-5",
                    usage=Usage(input_tokens=10, output_tokens=5),
                    endpoint="simulator",
                    body="{}",
                )
                for item in claimed
            ]
            started = time.perf_counter()
            store.results.record(owner=owner, now=NOW, finished=finished)
            out.append(time.perf_counter() - started)
    finally:
        store.close()


def run(url: str, *, shared: bool, writers: int, groups: int, size: int) -> str:
    store = Store.open(url)
    tag = "one" if shared else "own"
    ids = [f"{tag}-{w}" for w in range(1 if shared else writers)]
    for batch_id in ids:
        make_batch(store, batch_id, writers * groups * size if shared else groups * size)
    store.close()
    times: list[list[float]] = [[] for _ in range(writers)]
    threads = [
        threading.Thread(
            target=writer,
            args=(url, ids[0 if shared else w], f"w{w}", groups, size, times[w]),
        )
        for w in range(writers)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = sorted(t for per in times for t in per)
    p95 = every[int(len(every) * 0.95) - 1]
    return (
        f"{'one batch' if shared else 'a batch each':<13} {len(every) / elapsed:>9.1f} "
        f"{statistics.median(every) * 1000:>11.1f} {p95 * 1000:>9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--groups", type=int, default=200, help="group commits per writer")
    parser.add_argument("--size", type=int, default=20, help="results per group commit")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.writers} writers, {args.groups} groups of {args.size} each")
    print(f"{'batches':<13} {'commits/s':>9} {'record p50 ms':>11} {'p95 ms':>9}")
    for _ in range(args.repeat):
        for shared in (True, False):
            with scratch_postgres() as url:
                print(
                    run(
                        url, shared=shared, writers=args.writers, groups=args.groups, size=args.size
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
