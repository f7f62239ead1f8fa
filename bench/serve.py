"""Serving the Batches API: `batchrun serve` as a real process, driven by the official SDK
and by httpx pollers.

One server process (`batchrun serve --workers 1`, dispatching in-process; with
--separate-worker, `--workers 0` beside one `batchrun run --forever` process) on a fresh
SQLite file, or with --db on a fresh Postgres database (created for the run, dropped after).
In the same run:

1. create:   N requests (default 100,000; prompts of 200-500 bytes, some with a system
             prompt, some multi-turn, three models) in one `messages.batches.create` of the
             SDK: wall time, and the server process's peak RSS (VmHWM) before and after;
2. results:  once the worker has sent them to the built-in `simulator` endpoint (instant
             answers, in the worker's process), all N results lines streamed with httpx:
             wall time, lines, every custom_id exactly once;
3. dispatch: M requests at R requests/min (a `batchrun simulate` process with that limit
             and 0.5 s answers; the endpoint configured with the same limit), three times:
             alone, with P pollers calling retrieve as fast as they can (asyncio + httpx,
             keep-alive, a client each), alone again. Dispatch throughput is
             M / (ended_at - created_at) of the batch object, against the mean of the two
             runs alone (one light poll a second watches them end). Then the same, once
             each, CPU-bound: on the instant in-process simulator;
4. retrieve: the P pollers alone, on an ended batch, for --poll-seconds.

The default R, 3,000 requests/min, is one a worker reaches alone with room to spare on this
machine: with a limit in force each request costs a worker a few database transactions in a
row (about two shared rate takes, its claim and its record), which cap it at about 100
requests/s here however high the limit, so at a higher R dispatch is bound by that, not by
the limit (docs/benchmarks.md has the figures).

The machine has few cores: the pollers (this process), the server and the simulator share
them, so poller rates are bounded by all three. Server CPU seconds per 1,000 retrieves
(the dispatching processes' CPU during a poller phase minus what the same phase costs
without pollers, from /proc/PID/stat) is the figure that transfers to another machine.

Targets (the issue): create of 100,000 <= 15 s and <= 400 MB RSS; results of 100,000
streamed <= 10 s; 50 pollers served at >= 300 retrieves/s while a batch dispatches, dispatch
no more than 10 % slower.

Run:  .venv/bin/python bench/serve.py                          (SQLite; about 5 minutes)
      .venv/bin/python bench/serve.py --db postgresql+psycopg://postgres@127.0.0.1:5432/postgres
                                                               (Postgres; about 8 minutes)
      .venv/bin/python bench/serve.py --requests 20000 --dispatch-requests 1000  (quicker)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
from common import BATCHRUN, Simulator, machine_cpu_s, process_cpu_s, scratch_postgres

KEY = "bench-serve-key-0123456789abcdef"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
DISPATCH_MODEL = "claude-sonnet-4-5"
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
SYSTEMS = (
    "You are a careful assistant. Answer in plain English and keep it short.",
    "You review support tickets and classify them by product area and urgency.",
    "Translate the user's text into French; keep names and numbers unchanged.",
)
VOCABULARY = (
    "invoice customer shipment delay refund account password reset order warehouse "
    "tracking number address payment card declined subscription renewal cancel upgrade "
    "plan feature request bug report crash login error timeout server database backup "
    "restore migration schedule meeting agenda summary quarterly revenue forecast budget "
    "approval contract clause liability termination notice period employee onboarding "
    "laptop access badge policy holiday travel expense receipt hotel flight train the a "
    "of to and in for with on is was please could you explain why how what when which"
)
STARTUP_TIMEOUT_S = 60
WARM_UP_REQUESTS = 200
STOP_TIMEOUT_S = 90


# -- the server process ---------------------------------------------------------------------


class ServeProcess:
    """`batchrun --db URL serve --port 0` in its own process, dispatching in-process, or
    with ``separate_worker`` API-only (``--workers 0``) beside one `batchrun run --forever`
    process. Logs go to files in ``root``."""

    def __init__(self, db_url: str, root: Path, *, separate_worker: bool) -> None:
        self.log = root / "serve.log"
        env = {
            **os.environ,
            "HOME": str(root),
            "BATCHRUN_SERVE_API_KEYS": KEY,
            "BATCHRUN_CONFIG": str(root / "batchrun.toml"),
        }
        workers = "0" if separate_worker else "1"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    BATCHRUN,
                    "--db",
                    db_url,
                    "serve",
                    "--port",
                    "0",
                    "--workers",
                    workers,
                    "--endpoint",
                    "simulator",
                ],
                env=env,
                cwd=root,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.worker: subprocess.Popen[bytes] | None = None
        self.pid = self.process.pid
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while "listening on http://" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"batchrun serve did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.url = self.log.read_text().split("listening on ", 1)[1].split()[0]
        # The console script is Python itself, so this pid is the server, not a launcher.
        assert "serve" in Path(f"/proc/{self.pid}/cmdline").read_text()
        if separate_worker:
            with (root / "run.log").open("wb") as log:
                self.worker = subprocess.Popen(
                    [
                        BATCHRUN,
                        "--db",
                        db_url,
                        "run",
                        "--forever",
                        "--quiet",
                        "--poll-interval",
                        "1s",
                    ],
                    env=env,
                    cwd=root,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )

    def memory_mb(self) -> tuple[float, float]:
        """(VmHWM, VmRSS) of the server process: its peak and current resident memory."""
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
        )
        return tuple(int(fields[name].split()[0]) / 1024 for name in ("VmHWM", "VmRSS"))  # type: ignore[return-value]

    def cpu_s(self) -> float:
        """CPU seconds of the server process."""
        return process_cpu_s(self.pid)

    def dispatch_cpu_s(self) -> float:
        """CPU seconds of whatever dispatches: the server, plus the worker if separate."""
        return self.cpu_s() + (process_cpu_s(self.worker.pid) if self.worker else 0.0)

    def stop(self) -> None:
        for process in (self.worker, self.process):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@contextmanager
def database(admin_url: str | None, root: Path) -> Iterator[str]:
    """A fresh SQLite file in ``root``, or a fresh Postgres database next to ``admin_url``."""
    if admin_url is None:
        yield f"sqlite:///{root / 'serve.sqlite'}"
        return
    os.environ["BATCHRUN_TEST_POSTGRES_URL"] = admin_url  # what scratch_postgres connects to
    with scratch_postgres() as url:
        yield url


# -- requests -------------------------------------------------------------------------------


def make_requests(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` requests of 200-500 bytes of prompt: a third with a system prompt, a fifth
    multi-turn, three models, varied max_tokens and temperature."""
    rng = random.Random(seed)
    vocabulary = VOCABULARY.split()

    def text(size: int) -> str:
        words: list[str] = []
        length = 0
        while length < size:
            words.append(rng.choice(vocabulary))
            length += len(words[-1]) + 1
        return " ".join(words)

    made = []
    for i in range(count):
        size = rng.randint(200, 500)
        if i % 5 == 0:
            messages = [
                {"role": "user", "content": text(size // 3)},
                {"role": "assistant", "content": text(size // 3)},
                {"role": "user", "content": text(size // 3)},
            ]
        else:
            messages = [{"role": "user", "content": text(size)}]
        params: dict[str, Any] = {
            "model": MODELS[i % len(MODELS)],
            "max_tokens": rng.choice((256, 512, 1024)),
            "messages": messages,
        }
        if i % 3 == 0:
            params["system"] = SYSTEMS[i % len(SYSTEMS)]
        if i % 4 == 0:
            params["temperature"] = round(rng.random(), 2)
        made.append({"custom_id": f"req-{i:06d}", "params": params})
    return made


def dispatch_requests(count: int, prefix: str) -> list[dict[str, Any]]:
    """``count`` short requests to one model, so one per-model limit governs them all."""
    return [
        {
            "custom_id": f"{prefix}-{i:05d}",
            "params": {
                "model": DISPATCH_MODEL,
                "max_tokens": 256,
                "messages": [{"role": "user", "content": f"Summarise ticket {i} in one line."}],
            },
        }
        for i in range(count)
    ]


def sdk(url: str) -> anthropic.Anthropic:
    # No retries: a retried create would make a second batch.
    return anthropic.Anthropic(api_key=KEY, base_url=url, max_retries=0, timeout=600)


def wait_ended(url: str, batch_id: str, every_s: float) -> dict[str, Any]:
    """Poll the batch every ``every_s`` until it ended; its final object."""
    with httpx.Client(base_url=url, headers=HEADERS, timeout=60) as http:
        while True:
            batch: dict[str, Any] = http.get(f"/v1/messages/batches/{batch_id}").json()
            if batch["processing_status"] == "ended":
                return batch
            time.sleep(every_s)


def seconds_between(batch: dict[str, Any]) -> float:
    created = datetime.fromisoformat(batch["created_at"])
    ended = datetime.fromisoformat(batch["ended_at"])
    return (ended - created).total_seconds()


# -- 1 and 2: create and results ------------------------------------------------------------


def create_and_results(server: ServeProcess, count: int, seed: int) -> None:
    requests = make_requests(count, seed)
    body_mb = len(orjson.dumps({"requests": requests})) / 1e6
    prompt_bytes = [
        sum(len(m["content"]) for m in r["params"]["messages"]) for r in requests[:1000]
    ]
    peak_before, rss_before = server.memory_mb()
    cpu_before, client_before = server.cpu_s(), time.process_time()
    started = time.perf_counter()
    batch = sdk(server.url).messages.batches.create(requests=requests)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    server_cpu, client_cpu = server.cpu_s() - cpu_before, time.process_time() - client_before
    peak_after, rss_after = server.memory_mb()
    del requests
    print(
        f"1. create: {count:,} requests ({body_mb:.1f} MB body, prompts "
        f"{min(prompt_bytes)}-{max(prompt_bytes)} bytes) in {seconds:.1f} s "
        f"(target <= 15 s: {_met(seconds <= 15)}); server CPU {server_cpu:.1f} s, SDK "
        f"(this process) CPU {client_cpu:.1f} s",
        flush=True,
    )
    print(
        f"   server peak RSS (VmHWM) {peak_before:.0f} MB before, {peak_after:.0f} MB after "
        f"(target <= 400 MB: {_met(peak_after <= 400)}); RSS now {rss_after:.0f} MB "
        f"(was {rss_before:.0f}); processing_status {batch.processing_status}",
        flush=True,
    )

    ended = wait_ended(server.url, batch.id, every_s=2.0)
    print(
        f"   the worker sent them to the instant simulator in "
        f"{seconds_between(ended):.0f} s ({count / seconds_between(ended):.0f} requests/s): "
        f"{ended['request_counts']}",
        flush=True,
    )

    seen: Counter[str] = Counter()
    size = 0
    started = time.perf_counter()
    with (
        httpx.Client(base_url=server.url, headers=HEADERS, timeout=120) as http,
        http.stream("GET", f"/v1/messages/batches/{batch.id}/results") as response,
    ):
        response.raise_for_status()
        pending = b""
        for chunk in response.iter_bytes():
            size += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line:
                    seen[orjson.loads(line)["custom_id"]] += 1
        if pending.strip():
            seen[orjson.loads(pending)["custom_id"]] += 1
    seconds = time.perf_counter() - started
    expected = {f"req-{i:06d}" for i in range(count)}
    once = set(seen) == expected and all(n == 1 for n in seen.values())
    print(
        f"2. results: {sum(seen.values()):,} lines ({size / 1e6:.1f} MB) streamed in "
        f"{seconds:.1f} s (target <= 10 s: {_met(seconds <= 10)}); every custom_id exactly "
        f"once: {once}",
        flush=True,
    )


# -- 3 and 4: pollers and dispatch ----------------------------------------------------------


@dataclass
class Polled:
    retrieves: int
    seconds: float
    latencies_s: list[float]
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.retrieves / self.seconds

    def percentile_ms(self, share: float) -> float:
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _poll(
    url: str, batch_id: str, pollers: int, until_ended: bool, for_s: float, rate_per_s: float
) -> Polled:
    latencies: list[float] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + for_s
    path = f"/v1/messages/batches/{batch_id}"

    async def poller() -> None:
        # A client each, as independent pollers have: one pool of 50 connections shared by
        # 50 tasks costs httpx ~7 ms of CPU a request here, against ~1 ms for one each.
        # rate_per_s > 0: each poller starts a retrieve every pollers / rate_per_s seconds
        # (as SDK clients polling with a sleep do); 0: as fast as they can.
        every_s = pollers / rate_per_s if rate_per_s > 0 else 0.0
        next_at = loop.time() + random.uniform(0, every_s)
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as http:
            while not done.is_set():
                if every_s:
                    await asyncio.sleep(max(0.0, next_at - loop.time()))
                    next_at += every_s
                started = time.perf_counter()
                response = await http.get(path)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
                if until_ended and b'"processing_status":"ended"' in response.content:
                    done.set()
                if loop.time() > deadline:
                    done.set()

    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(poller() for _ in range(pollers)))
    seconds = time.perf_counter() - started
    return Polled(len(latencies), seconds, latencies, time.process_time() - cpu)


def poll(
    url: str,
    batch_id: str,
    pollers: int,
    *,
    until_ended: bool,
    for_s: float,
    rate_per_s: float = 0.0,
) -> Polled:
    return asyncio.run(_poll(url, batch_id, pollers, until_ended, for_s, rate_per_s))


@dataclass
class Dispatched:
    label: str
    batch_id: str
    rate: float
    cpu_s: float
    machine_busy: float
    polled: Polled | None


def dispatch(
    server: ServeProcess,
    *,
    label: str,
    endpoint: str,
    count: int,
    pollers: int,
    max_s: float,
    poll_rate_per_s: float = 0.0,
) -> Dispatched:
    """Create ``count`` requests on ``endpoint`` and watch the batch end, with ``pollers``
    retrieving it meanwhile (0: one light poll a second)."""
    client = sdk(server.url)
    requests = dispatch_requests(count, re.sub(r"[^A-Za-z0-9]+", "-", label))
    busy, total = machine_cpu_s()
    cpu = server.dispatch_cpu_s()
    batch = client.messages.batches.create(
        requests=requests,  # type: ignore[arg-type]
        extra_headers={"batchrun-endpoint": endpoint},
    )
    polled = None
    if pollers:
        polled = poll(
            server.url,
            batch.id,
            pollers,
            until_ended=True,
            for_s=max_s,
            rate_per_s=poll_rate_per_s,
        )
    ended = wait_ended(server.url, batch.id, every_s=1.0)
    cpu = server.dispatch_cpu_s() - cpu
    busy_after, total_after = machine_cpu_s()
    if ended["request_counts"]["succeeded"] != count:
        raise RuntimeError(f"{label}: {ended['request_counts']}")
    return Dispatched(
        label=label,
        batch_id=batch.id,
        rate=count / seconds_between(ended),
        cpu_s=cpu,
        machine_busy=(busy_after - busy) / (total_after - total),
        polled=polled,
    )


def show_dispatch(
    title: str, runs: list[Dispatched], count: int, limit_per_s: float | None, cpu_of: str
) -> None:
    """Each run against the mean of the runs alone; ``limit_per_s``: the limit (the target's
    case) or None (the CPU-bound case, no target)."""
    alone = [run for run in runs if run.polled is None]
    baseline = statistics.mean(run.rate for run in alone)
    cpu_alone = statistics.mean(run.cpu_s for run in alone)
    print(f"   {title}", flush=True)
    for run in runs:
        of_limit = f" ({run.rate / limit_per_s:4.0%} of the limit)" if limit_per_s else ""
        line = (
            f"     {run.label:13} dispatch {run.rate:6.1f} requests/s{of_limit} = "
            f"{run.rate / baseline:5.3f} x alone; {cpu_of} CPU {run.cpu_s:5.1f} s "
            f"({1000 * run.cpu_s / count:.1f} ms a request); machine "
            f"{run.machine_busy:4.0%} busy"
        )
        polled = run.polled
        if polled is not None:
            extra_cpu = run.cpu_s - cpu_alone
            line += (
                f"\n     {'':13} pollers {polled.rate:6.0f} retrieves/s ({polled.retrieves:,} "
                f"in {polled.seconds:.1f} s), p50 {polled.percentile_ms(0.5):.1f} ms, p99 "
                f"{polled.percentile_ms(0.99):.1f} ms; server CPU per 1,000 retrieves "
                f"{1000 * extra_cpu / polled.retrieves:.2f} s (beyond dispatch's own), "
                f"pollers' CPU per 1,000 {1000 * polled.client_cpu_s / polled.retrieves:.2f} s"
            )
            if limit_per_s and run.label == "pollers flat":
                line += (
                    f"\n     {'':13} a stress beyond the target: dispatch slowed "
                    f"{1 - run.rate / baseline:.1%}"
                )
            elif limit_per_s:
                slowed = 1 - run.rate / baseline
                line += (
                    f"\n     {'':13} targets: >= 300 retrieves/s: {_met(polled.rate >= 300)}; "
                    f"dispatch slowed {slowed:.1%} (<= 10 %: {_met(slowed <= 0.10)})"
                )
        print(line, flush=True)
    if len(alone) > 1:
        rates = [run.rate for run in alone]
        print(
            f"     the runs alone differ by {(max(rates) - min(rates)) / baseline:.1%} of their "
            "mean: the machine's own noise",
            flush=True,
        )


def pollers_and_dispatch(server: ServeProcess, args: argparse.Namespace) -> None:
    count, pollers = args.dispatch_requests, args.pollers
    expected_s = count / (args.rpm / 60)
    print(
        f"3. dispatch of {count:,} requests at {args.rpm:,} requests/min (simulator with 0.5 s "
        f"answers, about {expected_s:.0f} s each), alone and with {pollers} pollers; the "
        f"pollers, the server and the simulator share this machine's {os.cpu_count()} cores",
        flush=True,
    )
    # A first batch, not measured, so the endpoint's gentle start is behind every run.
    dispatch(server, label="warm-up", endpoint="sim", count=WARM_UP_REQUESTS, pollers=0, max_s=0)
    # With pollers twice: at the target's rate (--poll-rate, retrieves/s in all), and as fast
    # as they can (a stress: on a small machine they take every free cycle, from the
    # dispatch too).
    runs = [
        dispatch(
            server,
            label=label,
            endpoint="sim",
            count=count,
            pollers=n,
            max_s=10 * expected_s,
            poll_rate_per_s=rate,
        )
        for label, n, rate in (
            ("alone", 0, 0.0),
            (f"pollers {args.poll_rate:g}/s", pollers, args.poll_rate),
            ("pollers flat", pollers, 0.0),
            ("alone again", 0, 0.0),
        )
    ]
    cpu_of = "server + worker" if args.separate_worker else "server"
    show_dispatch("limit-bound (the target):", runs, count, args.rpm / 60, cpu_of)
    if args.cpu_requests:
        runs = [
            dispatch(
                server,
                label=label,
                endpoint="simulator",
                count=args.cpu_requests,
                pollers=n,
                max_s=600,
            )
            for label, n in (("alone", 0), ("with pollers", pollers))
        ]
        where = (
            "the worker process"
            if args.separate_worker
            else "the server (a thread of its own; the interpreter is shared with the API)"
        )
        show_dispatch(
            f"CPU-bound: {args.cpu_requests:,} requests on the instant simulator inside {where} "
            "(no target):",
            runs,
            args.cpu_requests,
            None,
            cpu_of,
        )
    if args.poll_seconds > 0:
        ended_id = runs[-1].batch_id
        cpu = server.cpu_s()
        polled = poll(server.url, ended_id, pollers, until_ended=False, for_s=args.poll_seconds)
        server_cpu = server.cpu_s() - cpu
        print(
            f"4. retrieve alone: {pollers} pollers on an ended batch for {polled.seconds:.0f} s: "
            f"{polled.rate:.0f} retrieves/s, p50 {polled.percentile_ms(0.5):.1f} ms, p99 "
            f"{polled.percentile_ms(0.99):.1f} ms; server CPU per 1,000 retrieves "
            f"{1000 * server_cpu / polled.retrieves:.2f} s, pollers' CPU per 1,000 "
            f"{1000 * polled.client_cpu_s / polled.retrieves:.2f} s",
            flush=True,
        )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default=None, help="a Postgres admin URL (default: SQLite)")
    parser.add_argument("--requests", type=int, default=100_000, help="N, for create/results")
    parser.add_argument("--dispatch-requests", type=int, default=2_000, help="M")
    parser.add_argument("--rpm", type=int, default=3_000, help="R, the dispatch limit")
    parser.add_argument(
        "--cpu-requests", type=int, default=5_000, help="0 skips the CPU-bound case"
    )
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument(
        "--poll-rate",
        type=float,
        default=320.0,
        help="retrieves/s of all pollers together in the paced run (the target: >= 300)",
    )
    parser.add_argument("--poll-seconds", type=float, default=10.0, help="phase 4; 0 skips it")
    parser.add_argument(
        "--separate-worker",
        action="store_true",
        help="serve --workers 0 beside one `batchrun run --forever` process",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    worker = (
        "one `run --forever` worker beside it" if args.separate_worker else "one in-process worker"
    )
    print(
        f"batchrun serve on {'Postgres' if args.db else 'SQLite'}, {worker}; "
        f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="batchrun-serve-") as scratch,
        Simulator("--rpm", str(args.rpm), "--latency-s", "0.5", "--burst-s", "1") as simulator,
    ):
        root = Path(scratch)
        (root / "batchrun.toml").write_text(
            f'[endpoints.sim]\nbase_url = "{simulator.url}"\nauth = "none"\n'
            f'[endpoints.sim.limits."{DISPATCH_MODEL}"]\nrpm = {args.rpm}\n'
        )
        with database(args.db, root) as db_url:
            server = ServeProcess(db_url, root, separate_worker=args.separate_worker)
            try:
                if args.requests:
                    create_and_results(server, args.requests, args.seed)
                pollers_and_dispatch(server, args)
            finally:
                server.stop()
        expected = WARM_UP_REQUESTS + 3 * args.dispatch_requests
        print(
            f"the socket simulator received {simulator.stats()['received']:,} requests "
            f"({expected:,} sent to it, each once, if none was retried)"
        )


if __name__ == "__main__":
    main()
