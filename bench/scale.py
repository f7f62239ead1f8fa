"""Scale: 100,000-request batches and a 256 MB file, in time and in memory.

Figures, each measured on the real CLI (a separate process) on a SQLite file:

- ingest of a 100,000-request file: wall time (target <= 10 s) and peak RSS;
- ingest of a ~256 MB file of requests with image blocks: peak RSS (target <= 300 MB);
- a run of the 100,000 requests against the simulator on 127.0.0.1 (zero latency, no
  limits): the worker's RSS when 10,000 and when 100,000 requests have been answered
  (target: within 50 MB of each other) and its requests per second;
- export of the 100,000 results to a file: wall time (target <= 10 s) and peak RSS;
- status of the 100,000-request batch: the store's own time (target <= 200 ms), and the
  whole command's wall time (Python start-up included).

Run:  .venv/bin/python bench/scale.py     (about 6 minutes, most of it the 100,000-request run)
      .venv/bin/python bench/scale.py --requests 20000   (quicker; the memory figures then
                                                          compare 2,000 with 20,000)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
from common import BATCHRUN, Simulator

IMAGE_FILE_BYTES = 256_000_000


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and stdout of a command (GNU time measures the RSS)."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[1]} failed: {done.stderr[-800:]}")
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    return elapsed, peak_kb / 1024, done.stdout


def write_small_requests(path: Path, count: int) -> None:
    with path.open("w") as stream:
        for i in range(count):
            line = {
                "custom_id": f"r{i:06d}",
                "params": {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 256,
                    "system": "You are a careful assistant.",
                    "messages": [{"role": "user", "content": f"Summarise item {i} of the list."}],
                },
            }
            stream.write(json.dumps(line) + "\n")


def _png_with_payload(width: int, height: int, payload_bytes: int) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    filler = chunk(b"tEXt", b"c\x00" + os.urandom(payload_bytes // 2).hex().encode())
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + filler + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def write_image_requests(path: Path, target_bytes: int) -> int:
    image = _png_with_payload(1200, 900, 300_000)  # ~400 KB of base64 per request
    written = count = 0
    with path.open("w") as stream:
        while written < target_bytes - 500_000:
            line = json.dumps(
                {
                    "custom_id": f"img{count:05d}",
                    "params": {
                        "model": "claude-sonnet-4-5",
                        "max_tokens": 256,
                        "messages": [
                            {
                                "role": "user",
                                "content": [
                                    {
                                        "type": "image",
                                        "source": {
                                            "type": "base64",
                                            "media_type": "image/png",
                                            "data": image,
                                        },
                                    },
                                    {"type": "text", "text": f"What is in picture {count}?"},
                                ],
                            }
                        ],
                    },
                }
            )
            stream.write(line + "\n")
            written += len(line) + 1
            count += 1
    return count


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_with_rss(
    env: dict[str, str], batch_id: str, url: str, marks: list[int]
) -> dict[str, float]:
    """Run the batch; sample the worker's RSS when the simulator has answered ``marks``."""
    figures: dict[str, float] = {}
    started = time.perf_counter()
    worker = subprocess.Popen(
        [BATCHRUN, "run", batch_id, "--max-concurrency", "64"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pending = sorted(marks)

    def watch() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while pending and worker.poll() is None:
                received = http.get("/_simulator/stats").json()["received"]
                while pending and received >= pending[0]:
                    figures[f"rss_at_{pending.pop(0)}"] = rss_mb(worker.pid)
                time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    code = worker.wait()
    watcher.join()
    if code != 0:
        raise RuntimeError(f"batchrun run exited {code}")
    figures["run_s"] = time.perf_counter() - started
    return figures


def status_store_ms(db_url: str, batch_id: str) -> float:
    from batchrun.store.store import Store

    store = Store.open(db_url)
    try:
        store.batches.get(batch_id)  # warm the connection, as the command's own first query
        started = time.perf_counter()
        store.batches.get(batch_id)
        return (time.perf_counter() - started) * 1000
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--skip-images", action="store_true")
    args = parser.parse_args()
    count = args.requests
    with tempfile.TemporaryDirectory(prefix="batchrun-scale-") as tmp_name:
        tmp = Path(tmp_name)
        db_url = f"sqlite:///{tmp / 'scale.db'}"
        env = {**os.environ, "BATCHRUN_DATABASE_URL": db_url, "ANTHROPIC_API_KEY": "sk-bench"}
        small = tmp / "small.jsonl"
        write_small_requests(small, count)
        ingest_s, ingest_mb, out = timed([BATCHRUN, "submit", str(small)], env)
        batch_id = out.strip()
        print(
            f"ingest {count:,} requests ({small.stat().st_size / 1e6:.0f} MB): "
            f"{ingest_s:.1f} s, peak RSS {ingest_mb:.0f} MB   (target <= 10 s)"
        )

        if not args.skip_images:
            images = tmp / "images.jsonl"
            lines = write_image_requests(images, IMAGE_FILE_BYTES)
            image_env = {**env, "BATCHRUN_DATABASE_URL": f"sqlite:///{tmp / 'images.db'}"}
            image_s, image_mb, _ = timed([BATCHRUN, "submit", str(images)], image_env)
            print(
                f"ingest {images.stat().st_size / 1e6:.0f} MB of image requests ({lines:,} "
                f"lines): {image_s:.1f} s, peak RSS {image_mb:.0f} MB   (target <= 300 MB)"
            )
            images.unlink()

        with Simulator() as simulator:
            run = run_with_rss(
                {**env, "ANTHROPIC_BASE_URL": simulator.url},
                batch_id,
                simulator.url,
                [count // 10, count],
            )
        low, high = run.get(f"rss_at_{count // 10}", 0.0), run.get(f"rss_at_{count}", 0.0)
        print(
            f"run {count:,}: {run['run_s']:.0f} s ({count / run['run_s']:.0f} req/s); worker "
            f"RSS {low:.0f} MB after {count // 10:,}, {high:.0f} MB after {count:,} "
            f"(+{high - low:.0f} MB; target <= 50)"
        )

        export_s, export_mb, _ = timed(
            [BATCHRUN, "results", batch_id, "-o", str(tmp / "results.jsonl")], env
        )
        print(
            f"export {count:,} results ({(tmp / 'results.jsonl').stat().st_size / 1e6:.0f} MB):"
            f" {export_s:.1f} s, peak RSS {export_mb:.0f} MB   (target <= 10 s)"
        )

        store_ms = status_store_ms(db_url, batch_id)
        status_s, _, _ = timed([BATCHRUN, "status", batch_id, "--json"], env)
        print(
            f"status of {count:,}: store {store_ms:.0f} ms (target <= 200 ms); whole command "
            f"{status_s * 1000:.0f} ms with Python start-up"
        )


if __name__ == "__main__":
    main()
