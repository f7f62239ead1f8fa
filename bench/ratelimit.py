"""Rate-limit utilisation: batchrun against a naive pacer, at the simulator's own limits.

Every scenario runs twice at the same time, each run against its own simulator process on
127.0.0.1 with the same limits, latency and requests:

- batchrun: the real CLI (`batchrun submit` + `batchrun run`) with the configured limits;
- baseline: httpx + a semaphore of 64 + aiolimiter pacing at the configured limits per
  second (limit/60 a second, so no minute-sized burst at the start), reserving
  input + max_tokens for token limits, honouring retry-after on 429 (what a careful
  hand-written runner does). It is stopped when batchrun's run has had time to finish.

Figures come from the simulators' own per-second admission counts, over the steady window
(the first seconds are skipped, and the last few, where the batch drains). Scenarios:

  a  RPM-bound, configured = server = 600 RPM, the server allows 2 s of burst
  b  TPM-bound (input + output), 60,000 TPM, replies of ~40 tokens against max_tokens 1024
  c1 configured 1,200 RPM, server 600 RPM, server sends anthropic-ratelimit-* headers
  c2 the same, server sends only retry-after
  d  image-heavy requests (an image of 200-1700 px and ~2,000 characters of text each):
     input estimate error after calibration (batchrun only)
  h1 a high limit: 30,000 RPM configured = server, answers in 50-150 ms, 20,000 requests
     (one worker on SQLite; batchrun only: the pacer would share the two cores)
  h2 10,000 RPM configured = server, answers in 1-3 s, 8,000 requests (batchrun only)

Run h1 and h2 on their own (`--only h1`, `--only h2`): at these rates the client needs a
core, and another scenario beside it would take its share.

Unknown limits (nothing configured, no anthropic-ratelimit-* headers; batchrun only, since
the baseline needs a configured limit): utilisation from 30 s after the first admission,
% of calls 429 and the time ÷ the floor (requests ÷ the limit):

  u1 900 requests, server 300 RPM with a 2 s burst, 429s without retry-after
  u2 the same, 429s with retry-after
  u3 300 requests, server 120 requests per fixed 60 s window (LiteLLM's proxy counting,
     mimicked by the simulator: 429s without retry-after nor headers)
  u4 300 requests against llmock (a third-party mock server, run from its own venv: set
     LLMOCK=/path/to/bin/llmock, default /work/benchvenv/bin/llmock; skipped with a message
     when it is not there) at 100,000 tokens a minute, which it charges as the prompt
     estimate + max_tokens (512) up front and never reconciles; replies are ~40 tokens.
     Floor: the time llmock's own bucket needs to admit what it charged. Its source
     (llmock/ratelimit.py, ``_Bucket(per_minute, per_minute, now)``) holds a full minute
     (capacity = the limit), full at the start, refilled at limit ÷ 60 a second; it
     charges a request after its latency (middleware: ``_wait`` before ``_quota``), the
     body's bytes ÷ 4 + max_tokens (``requested_tokens``). So no client is done before
     latency + (charged - limit) ÷ (limit ÷ 60); charged is summed over the requests it
     admitted, from the bodies it logged. (Charged ÷ the limit, the time at its sustained
     rate without its minute of burst, is printed beside it.)
  u5 300 requests through the real LiteLLM proxy (run only when named: `--only u5`; set
     LITELLM=/path/to/bin/litellm, default /work/litellmvenv/bin/litellm, from
     `pip install 'litellm[proxy]'` in a separate venv; skipped with a message when it is not
     there) in front of the simulator, its key limited to 120 requests a minute. The key
     comes from LiteLLM's documented custom-auth hook (a UserAPIKeyAuth with rpm_limit=120),
     not from a virtual key, which needs its database through Prisma, whose engines are
     downloaded at install time; either way the same limiter (parallel_request_limiter_v3,
     in memory) enforces the key's rpm_limit. Calls and 429s are read from the proxy's access
     log; the time is the simulator's, from the first to the last admission, ÷ 150 s as in
     u3 (LiteLLM's windows start at a key's first request, so 121 s is the least possible).

Run:  .venv/bin/python bench/ratelimit.py            (about 3 minutes, all in parallel; not u5)
      .venv/bin/python bench/ratelimit.py --duration-s 40   (a quicker, noisier look)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiolimiter import AsyncLimiter
from common import BATCHRUN, Simulator, process_cpu_s

LATENCY_S = 2.0
JITTER_S = 1.0
BASELINE_CONCURRENCY = 64
TAIL_S = 5


@dataclass
class Scenario:
    name: str
    description: str
    binding: str  # "requests" or "tokens"
    server_limit: float  # per minute, of the binding kind
    server_args: list[str]
    run_args: list[str]
    requests_per_s: float  # expected steady rate, to size the batch
    skip_s: int
    max_tokens: int = 256
    output_tokens: int = 40
    prompt_chars: int = 200
    images: bool = False
    baseline: bool = True
    targets: dict[str, float] = field(default_factory=dict)
    count: int | None = None  # requests (default: sized to the duration)
    latency_s: float = LATENCY_S  # the simulator's answers take latency_s ± jitter_s / 2
    jitter_s: float = JITTER_S


def scenarios() -> list[Scenario]:
    rpm = ["--rpm", "600", "--burst-s", "2"]
    return [
        Scenario(
            "a",
            "RPM-bound, configured = server",
            "requests",
            600,
            rpm,
            ["--rpm", "600"],
            10,
            skip_s=10,
            targets={"util": 0.99, "429": 0.001},
        ),
        Scenario(
            "b",
            "TPM-bound, replies ~40 of max_tokens 1024",
            "tokens",
            60_000,
            ["--tpm", "60000", "--burst-s", "2"],
            ["--tpm", "60000"],
            5.5,
            skip_s=15,
            max_tokens=1024,
            prompt_chars=400,
            targets={"util": 0.97, "429": 0.01},
        ),
        Scenario(
            "c1",
            "configured 2x server, with headers",
            "requests",
            600,
            rpm,
            ["--rpm", "1200"],
            10,
            skip_s=30,
            targets={"util": 0.95, "429": 0.05},
        ),
        Scenario(
            "c2",
            "configured 2x server, retry-after only",
            "requests",
            600,
            [*rpm, "--no-ratelimit-headers"],
            ["--rpm", "1200"],
            10,
            skip_s=30,
            targets={"util": 0.90, "429": 0.10},
        ),
        Scenario(
            "d",
            "image-heavy, estimate after calibration",
            "requests",
            300,
            ["--rpm", "300", "--burst-s", "2"],
            ["--rpm", "300"],
            5,
            skip_s=10,
            prompt_chars=2000,
            images=True,
            baseline=False,
            targets={"estimate_error": 0.15},
        ),
        Scenario(
            "h1",
            "high limit: 30,000 RPM configured = server, fast",
            "requests",
            30_000,
            ["--rpm", "30000", "--burst-s", "2"],
            ["--rpm", "30000"],
            500,
            skip_s=10,
            baseline=False,
            latency_s=0.1,
            jitter_s=0.1,
            count=20_000,
            targets={"util": 0.97, "429": 0.005},
        ),
        Scenario(
            "h2",
            "10,000 RPM configured = server, 1-3 s answers",
            "requests",
            10_000,
            ["--rpm", "10000", "--burst-s", "2"],
            ["--rpm", "10000", "--max-concurrency", "1024"],
            10_000 / 60,
            skip_s=10,
            baseline=False,
            count=8_000,
            targets={"util": 0.99, "429": 0.005},
        ),
        Scenario(
            "u1",
            "unknown 300 RPM, bare 429s",
            "requests",
            300,
            ["--rpm", "300", "--burst-s", "2", "--no-ratelimit-headers", "--no-retry-after"],
            [],
            5,
            skip_s=30,
            baseline=False,
            count=900,
            targets={"util": 0.90, "429": 0.05},
        ),
        Scenario(
            "u2",
            "unknown 300 RPM, 429s with retry-after",
            "requests",
            300,
            ["--rpm", "300", "--burst-s", "2", "--no-ratelimit-headers"],
            [],
            5,
            skip_s=30,
            baseline=False,
            count=900,
            targets={"util": 0.90, "429": 0.05},
        ),
        Scenario(
            "u3",
            "unknown 120/min fixed 60 s windows, bare 429s",
            "requests",
            120,
            [
                "--rpm",
                "120",
                "--fixed-window-s",
                "60",
                "--no-ratelimit-headers",
                "--no-retry-after",
            ],
            [],
            2,
            skip_s=0,
            baseline=False,
            count=300,
            targets={"floor": 1.4, "429": 0.10},
        ),
    ]


# -- inputs -----------------------------------------------------------------------------------


def _png(width: int, height: int) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return base64.b64encode(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    ).decode()


def request_lines(scenario: Scenario, count: int) -> list[dict[str, Any]]:
    words = "the quick brown fox jumps over the lazy dog while batch jobs wait their turn "
    lines = []
    for i in range(count):
        text = f"Request {i}: " + (words * (scenario.prompt_chars // len(words) + 1))
        content: Any = text[: scenario.prompt_chars + 12]
        if scenario.images:
            side = 200 + (i * 53) % 1500
            content = [
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": _png(side, side * 2 // 3),
                    },
                },
                {"type": "text", "text": f"Describe image {i}. " + text},
            ]
        lines.append(
            {
                "custom_id": f"r{i:06d}",
                "params": {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": scenario.max_tokens,
                    "messages": [{"role": "user", "content": content}],
                },
            }
        )
    return lines


# -- the simulator ----------------------------------------------------------------------------


def start_simulator(scenario: Scenario) -> Simulator:
    """The scenario's simulator: its latency, output size and server-side limits."""
    return Simulator(
        "--latency-s",
        str(scenario.latency_s - scenario.jitter_s / 2),
        "--latency-jitter-s",
        str(scenario.jitter_s),
        "--output-tokens",
        str(scenario.output_tokens),
        "--seed",
        "7",
        *scenario.server_args,
    )


# -- the two runners --------------------------------------------------------------------------


async def run_batchrun(
    scenario: Scenario, lines: list[dict[str, Any]], workdir: Path, sim: Simulator
) -> dict[str, Any]:
    requests_file = workdir / f"{scenario.name}.jsonl"
    requests_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    db = workdir / f"{scenario.name}.db"
    env = {
        **os.environ,
        "BATCHRUN_DATABASE_URL": f"sqlite:///{db}",
        "ANTHROPIC_BASE_URL": sim.url,
        "ANTHROPIC_API_KEY": "sk-bench",
    }
    submit = await asyncio.create_subprocess_exec(
        BATCHRUN,
        "submit",
        str(requests_file),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await submit.communicate()
    batch_id = out.decode().strip()
    run = await asyncio.create_subprocess_exec(
        BATCHRUN,
        "run",
        batch_id,
        *scenario.run_args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    # The worker's CPU, read from /proc while it runs (the last 0.2 s are not counted).
    cpu_s = 0.0
    finishing = asyncio.ensure_future(run.communicate())
    while not finishing.done():
        with contextlib.suppress(OSError):  # it ended meanwhile
            cpu_s = process_cpu_s(run.pid)
        await asyncio.wait([finishing], timeout=0.2)
    _, err = finishing.result()
    if run.returncode != 0:
        raise RuntimeError(f"batchrun run failed ({run.returncode}): {err.decode()[-500:]}")
    return {"db": str(db), "cpu_ms_per_request": 1000 * cpu_s / len(lines)}


async def run_baseline(
    scenario: Scenario, lines: list[dict[str, Any]], sim: Simulator, time_cap_s: float
) -> dict[str, Any]:
    per_s = {"--rpm": None, "--tpm": None}
    for flag in per_s:
        if flag in scenario.run_args:
            per_s[flag] = float(scenario.run_args[scenario.run_args.index(flag) + 1])
    rpm, tpm = per_s["--rpm"], per_s["--tpm"]
    request_pacer = AsyncLimiter(rpm / 60, 1) if rpm else None
    token_pacer = AsyncLimiter(tpm / 60, 1) if tpm else None
    slots = asyncio.Semaphore(BASELINE_CONCURRENCY)
    headers = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(
        base_url=sim.url, timeout=120, limits=httpx.Limits(max_connections=BASELINE_CONCURRENCY)
    ) as http:

        async def one(line: dict[str, Any]) -> None:
            params = line["params"]
            cost = len(json.dumps(params["messages"])) // 4 + params["max_tokens"]
            async with slots:
                while True:
                    if request_pacer:
                        await request_pacer.acquire()
                    if token_pacer and tpm:
                        await token_pacer.acquire(min(cost, tpm / 60))
                    response = await http.post("/v1/messages", json=params, headers=headers)
                    if response.status_code != 429:
                        return
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

        tasks = [asyncio.ensure_future(one(line)) for line in lines]
        _, unfinished = await asyncio.wait(tasks, timeout=time_cap_s)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
    return {"unfinished": len(unfinished)}


# -- figures ----------------------------------------------------------------------------------


def steady_figures(scenario: Scenario, stats: dict[str, Any]) -> dict[str, float]:
    by_second = {int(k): v for k, v in stats["admitted_by_second"].items()}
    first, last = min(by_second), max(by_second)
    window = range(first + scenario.skip_s, last - TAIL_S)
    requests = sum(by_second.get(s, [0, 0, 0])[0] for s in window)
    tokens = sum(sum(by_second.get(s, [0, 0, 0])[1:]) for s in window)
    minutes = len(window) / 60
    achieved = requests / minutes if scenario.binding == "requests" else tokens / minutes
    rejected = stats["by_status"].get("429", 0)
    return {
        "steady_s": len(window),
        "requests_per_min": requests / minutes,
        "tokens_per_min": tokens / minutes,
        "util": achieved / scenario.server_limit,
        "calls": stats["received"],
        "429s": rejected,
        "429": rejected / max(stats["received"], 1),
        "total_s": last - first + 1,
        "floor": (last - first + 1)
        / (stats["by_status"].get("200", 0) / scenario.server_limit * 60),
    }


def estimate_errors(db: str) -> dict[str, float]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT r.estimated_input_tokens, q.estimated_input_tokens, r.input_tokens "
            "FROM results r JOIN requests q ON q.id = r.request_id "
            "WHERE r.result_type = 'succeeded' ORDER BY r.completed_at, r.request_id"
        ).fetchall()
    late = rows[len(rows) // 2 :]
    calibrated = [abs(est - actual) / actual for est, _, actual in late]
    raw = [abs(est - actual) / actual for _, est, actual in late]
    return {
        "estimate_error": max(calibrated),
        "mean_error": sum(calibrated) / len(calibrated),
        "raw_mean_error": sum(raw) / len(raw),
    }


async def run_scenario(scenario: Scenario, duration_s: float, workdir: Path) -> dict[str, Any]:
    count = scenario.count or int(scenario.requests_per_s * (duration_s + scenario.skip_s + TAIL_S))
    lines = request_lines(scenario, count)
    sims = {"batchrun": start_simulator(scenario)}
    if scenario.baseline:
        sims["baseline"] = start_simulator(scenario)
    try:
        jobs = [run_batchrun(scenario, lines, workdir, sims["batchrun"])]
        if scenario.baseline:
            time_cap_s = duration_s + scenario.skip_s + TAIL_S + 30
            jobs.append(run_baseline(scenario, lines, sims["baseline"], time_cap_s))
        outputs = await asyncio.gather(*jobs)
        figures: dict[str, Any] = {"requests": count}
        for (runner, sim), output in zip(sims.items(), outputs, strict=True):
            figures[runner] = steady_figures(scenario, sim.stats())
            if "cpu_ms_per_request" in output:
                figures[runner]["cpu_ms"] = output["cpu_ms_per_request"]
            if scenario.images and runner == "batchrun":
                figures[runner].update(estimate_errors(output["db"]))
        return figures
    finally:
        for sim in sims.values():
            sim.stop()


def report(results: dict[str, dict[str, Any]], chosen: list[Scenario]) -> None:
    print(
        f"{'':3} {'scenario':44} {'runner':9} {'util':>7} {'req/min':>8} {'tok/min':>8} "
        f"{'calls':>6} {'429s':>6} {'429%':>6} {'time/floor':>10} {'CPU ms':>7}  target"
    )
    for scenario in chosen:
        figures = results[scenario.name]
        for runner in ("batchrun", "baseline"):
            if runner not in figures:
                continue
            f = figures[runner]
            target = ""
            if "floor" in scenario.targets and runner == "batchrun":
                ok = f["floor"] <= scenario.targets["floor"] and f["429"] <= scenario.targets["429"]
                target = (
                    f"time<={scenario.targets['floor']:.1f}x floor "
                    f"429<={scenario.targets['429']:.1%} {'PASS' if ok else 'FAIL'}"
                )
            if "util" in scenario.targets and runner == "batchrun":
                ok = f["util"] >= scenario.targets["util"] and f["429"] <= scenario.targets["429"]
                target = (
                    f"util>={scenario.targets['util']:.0%} 429<={scenario.targets['429']:.1%}"
                    f" {'PASS' if ok else 'FAIL'}"
                )
            if "estimate_error" in f:
                ok = f["estimate_error"] <= scenario.targets["estimate_error"]
                target = (
                    f"estimate error max {f['estimate_error']:.1%} mean {f['mean_error']:.1%}"
                    f" (raw mean {f['raw_mean_error']:.1%}) {'PASS' if ok else 'FAIL'}"
                )
            cpu = f"{f['cpu_ms']:.2f}" if "cpu_ms" in f else ""
            print(
                f"{scenario.name:3} {scenario.description:44} {runner:9} {f['util']:7.1%} "
                f"{f['requests_per_min']:8.0f} {f['tokens_per_min']:8.0f} {f['calls']:6d} "
                f"{f['429s']:6d} {f['429']:6.1%} {f['floor']:10.2f} {cpu:>7}  {target}"
            )
    print(
        f"\nbinding limit: requests/min for a, c1, c2, d, h1, h2; tokens/min (input + output) "
        f"for b. Steady window = from skip_s after the first admission to {TAIL_S} s before "
        f"the last; latency {LATENCY_S - JITTER_S / 2:.1f}-{LATENCY_S + JITTER_S / 2:.1f} s "
        "(h1: 0.05-0.15 s). CPU ms: the batchrun worker's CPU per request, read from /proc "
        "while it ran."
    )


LLMOCK = Path(os.environ.get("LLMOCK", "/work/benchvenv/bin/llmock"))
LLMOCK_INSTALLED = LLMOCK.exists()
LLMOCK_TPM = 100_000
LLMOCK_REQUESTS = 300
LLMOCK_MAX_TOKENS = 512
LLMOCK_LATENCY_S = 2.0


async def run_llmock(workdir: Path) -> dict[str, Any]:
    """u4: batchrun with nothing configured against llmock charging max_tokens up front."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = await asyncio.create_subprocess_exec(
        str(LLMOCK),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--tpm",
        str(LLMOCK_TPM),
        "--latency-ms",
        str(round(LLMOCK_LATENCY_S * 1000)),
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for _ in range(300):
                try:
                    await http.get("/_llmock/requests")
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
            scenario = Scenario(
                "u4",
                "",
                "tokens",
                LLMOCK_TPM,
                [],
                [],
                0,
                skip_s=0,
                max_tokens=LLMOCK_MAX_TOKENS,
                prompt_chars=400,
            )
            lines = request_lines(scenario, LLMOCK_REQUESTS)

            class _Target:
                url = f"{base}/anthropic"

            started = time.monotonic()
            await run_batchrun(scenario, lines, workdir, _Target())  # type: ignore[arg-type]
            elapsed_s = time.monotonic() - started
            entries = (await http.get("/_llmock/requests")).json()["requests"]
        messages = [e for e in entries if e.get("path", "").endswith("/v1/messages")]
        statuses = [e["status"] for e in messages]
    finally:
        server.terminate()
        await server.wait()
    # What llmock charged (requested_tokens: max(1, the body's bytes // 4) + max_tokens, for
    # the requests it admitted); batchrun sends compact JSON, which its log re-encodes alike.
    charged = sum(
        max(1, len(json.dumps(e["body"], separators=(",", ":"))) // 4) + e["body"]["max_tokens"]
        for e in messages
        if e["status"] == 200
    )
    floor_s = LLMOCK_LATENCY_S + max(charged - LLMOCK_TPM, 0) / (LLMOCK_TPM / 60)
    return {
        "calls": len(statuses),
        "429s": statuses.count(429),
        "429": statuses.count(429) / max(len(statuses), 1),
        "elapsed_s": elapsed_s,
        "charged": charged,
        "floor_s": floor_s,
        "floor": elapsed_s / floor_s,
        "sustained_s": charged / LLMOCK_TPM * 60,
    }


def report_llmock(figures: dict[str, Any] | None) -> None:
    if figures is None:
        print(
            f"u4  skipped: llmock is not installed at {LLMOCK} (pip install llmock into a "
            "separate venv and set LLMOCK to its bin/llmock)"
        )
        return
    ok = figures["429"] <= 0.05 and figures["floor"] <= 1.1
    print(
        f"u4  llmock, {LLMOCK_TPM:,} TPM charged max_tokens up front: {figures['calls']} calls, "
        f"{figures['429s']} 429s ({figures['429']:.1%}), {figures['elapsed_s']:.0f} s = "
        f"{figures['floor']:.2f} x the floor of {figures['floor_s']:.0f} s (at the sustained "
        f"rate, without llmock's minute of burst: {figures['sustained_s']:.0f} s)  "
        f"time<=1.1x floor 429<=5.0% {'PASS' if ok else 'FAIL'}"
    )


LITELLM = Path(os.environ.get("LITELLM", "/work/litellmvenv/bin/litellm"))
LITELLM_INSTALLED = LITELLM.exists()
LITELLM_RPM = 120
LITELLM_REQUESTS = 300
LITELLM_START_S = 120  # the proxy imports for a long while on a loaded machine
# LiteLLM's documented custom-auth hook: every key it is given is a key of 120 requests a
# minute, as a virtual key with rpm_limit 120 would be.
LITELLM_AUTH = f"""\
from litellm.proxy._types import UserAPIKeyAuth


async def user_api_key_auth(request, api_key):
    return UserAPIKeyAuth(api_key=api_key, rpm_limit={LITELLM_RPM})
"""
LITELLM_CONFIG = """\
model_list:
  - model_name: "*"
    litellm_params:
      model: "anthropic/*"
      api_base: "{upstream}"
      api_key: "sk-upstream"
general_settings:
  master_key: "sk-bench-master-{nonce}"
  custom_auth: bench_auth.user_api_key_auth
"""
# uvicorn's access log with the time of each answer, read after the run.
LITELLM_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"timed": {"format": "%(created).3f %(name)s %(message)s"}},
    "handlers": {
        "out": {
            "class": "logging.StreamHandler",
            "formatter": "timed",
            "stream": "ext://sys.stdout",
        }
    },
    "loggers": {"uvicorn.access": {"handlers": ["out"], "level": "INFO", "propagate": False}},
}
ANSWER_RE = re.compile(
    r'^(\d+\.\d+) uvicorn\.access .*"POST /v1/messages[^ "]* HTTP/1\.1" (\d{3})', re.M
)


async def run_litellm(workdir: Path) -> dict[str, Any]:
    """u5: batchrun with nothing configured through LiteLLM's proxy, its key at 120/min."""
    import socket
    import uuid

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scenario = Scenario("u5", "", "requests", LITELLM_RPM, [], [], 0, skip_s=0)
    sim = start_simulator(scenario)
    home = workdir / "litellm"
    home.mkdir()
    (home / "bench_auth.py").write_text(LITELLM_AUTH)
    (home / "log_config.json").write_text(json.dumps(LITELLM_LOG_CONFIG))
    (home / "config.yaml").write_text(
        LITELLM_CONFIG.format(upstream=sim.url, nonce=uuid.uuid4().hex)
    )
    log = home / "proxy.log"
    with log.open("wb") as log_file:
        proxy = await asyncio.create_subprocess_exec(
            str(LITELLM),
            "--config",
            "config.yaml",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log_config",
            "log_config.json",
            cwd=home,
            # The bundled price list, not one fetched from the network at start-up.
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            deadline = time.monotonic() + LITELLM_START_S
            while True:
                try:
                    if (await http.get("/health/liveliness")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proxy.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the LiteLLM proxy did not start: see {log}")
                await asyncio.sleep(0.5)
        lines = request_lines(scenario, LITELLM_REQUESTS)

        class _Target:
            url = base

        # The proxy's CPU over the run: its 429s come late when it has many requests on hand.
        proxy_cpu_s = process_cpu_s(proxy.pid)
        started = time.monotonic()
        await run_batchrun(scenario, lines, workdir, _Target())  # type: ignore[arg-type]
        elapsed_s = time.monotonic() - started
        proxy_cpu_s = process_cpu_s(proxy.pid) - proxy_cpu_s
        stats = sim.stats()
    finally:
        proxy.terminate()
        await proxy.wait()
        sim.stop()
    answers = [(float(t), int(code)) for t, code in ANSWER_RE.findall(log.read_text())]
    statuses = [code for _, code in answers]
    # 429s by 20 s from the first call: where in LiteLLM's windows they fall.
    first_s = min((t for t, _ in answers), default=0.0)
    rejected_by_20s: dict[int, int] = {}
    for t, code in answers:
        if code == 429:
            key = int(t - first_s) // 20 * 20
            rejected_by_20s[key] = rejected_by_20s.get(key, 0) + 1
    by_second = [int(k) for k in stats["admitted_by_second"]]
    span_s = max(by_second) - min(by_second) + 1
    floor_s = LITELLM_REQUESTS / LITELLM_RPM * 60
    return {
        "calls": len(statuses),
        "429s": statuses.count(429),
        "429": statuses.count(429) / max(len(statuses), 1),
        "admitted": stats["by_status"].get("200", 0),
        "span_s": span_s,
        "elapsed_s": elapsed_s,
        "floor_s": floor_s,
        "floor": span_s / floor_s,
        "429s_by_20s": rejected_by_20s,
        "proxy_cpu_ms_per_call": 1000 * proxy_cpu_s / max(len(statuses), 1),
    }


def report_litellm(figures: dict[str, Any] | None) -> None:
    if figures is None:
        print(
            f"u5  skipped: LiteLLM is not installed at {LITELLM} (pip install 'litellm[proxy]' "
            "into a separate venv and set LITELLM to its bin/litellm)"
        )
        return
    ok = figures["429"] <= 0.10 and figures["floor"] <= 1.4
    print(
        f"u5  LiteLLM proxy, key rpm_limit {LITELLM_RPM}: {figures['calls']} calls, "
        f"{figures['429s']} 429s ({figures['429']:.1%}), {figures['admitted']} answered; first "
        f"to last admission {figures['span_s']} s = {figures['floor']:.2f} x the floor of "
        f"{figures['floor_s']:.0f} s (batchrun's run {figures['elapsed_s']:.0f} s)  "
        f"time<=1.4x floor 429<=10.0% {'PASS' if ok else 'FAIL'}"
    )
    spread = ", ".join(f"{s}-{s + 20} s: {n}" for s, n in sorted(figures["429s_by_20s"].items()))
    print(
        f"    429s by time from the first call: {spread or 'none'}; the proxy's CPU "
        f"{figures['proxy_cpu_ms_per_call']:.0f} ms a call"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration-s", type=float, default=140, help="steady seconds per scenario (default 140)"
    )
    parser.add_argument(
        "--only", nargs="*", help="scenario names (a b c1 c2 d h1 h2 u1 u2 u3 u4 u5)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    # h1 and h2 run only when named (see the module).
    chosen = [s for s in scenarios() if (s.name in args.only if args.only else s.name[0] != "h")]
    with_llmock = not args.only or "u4" in args.only
    # u5 only when named: the proxy takes a core of its own.
    with_litellm = bool(args.only) and "u5" in args.only
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="batchrun-bench-") as tmp:
        outcomes = await asyncio.gather(
            *(run_scenario(s, args.duration_s, Path(tmp)) for s in chosen)
        )
        llmock = await run_llmock(Path(tmp)) if with_llmock and LLMOCK_INSTALLED else None
        litellm = await run_litellm(Path(tmp)) if with_litellm and LITELLM_INSTALLED else None
    results = {s.name: o for s, o in zip(chosen, outcomes, strict=True)}
    if chosen:
        report(results, chosen)
    if with_llmock:
        report_llmock(llmock)
        results["u4"] = llmock or {}
    if with_litellm:
        report_litellm(litellm)
        results["u5"] = litellm or {}
    print(f"(ran {time.monotonic() - started:.0f} s)")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
