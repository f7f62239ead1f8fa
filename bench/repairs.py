"""Repairs: a table of tickets with a schema, against a simulator that answers a share of
structured requests with JSON that does not validate, at several ``repair`` settings.

For each setting, on a fresh SQLite file, through ``batchrun.Client`` (in this process) and
the simulator on a socket (announcing a limit far above what is sent, so nothing slow-starts):
rows that ended succeeded (every answer checked here again with jsonschema), rows that ended
``invalid_output``, sends per row (as the simulator counted them), the share of the cost the
repairs took, and the CPU of this process per row (the simulator shares the process, so it is
included: a ceiling, not the worker's own cost).

Run:  .venv/bin/python bench/repairs.py                          (300 rows, 20 %, repair 0 1 2)
      .venv/bin/python bench/repairs.py --rows 1000 --invalid 0.3 --repair 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from jsonschema import Draft202012Validator

import batchrun
from batchrun.simulator import ModelLimits, SimulatorConfig, create_app, running_simulator

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["category", "priority", "summary"],
    "properties": {
        "category": {"enum": ["billing", "bug", "account", "other"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string"},
    },
}


def run_once(rows: int, invalid: float, repair: int, root: Path) -> str:
    template = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 200,
        "system": f"You triage support tickets. [[sim:invalid_output={invalid}]]",
        "user": "Ticket {{ ticket_id }}: {{ subject }}",
        "id": "t-{{ ticket_id }}",
        "output": SCHEMA,
    }
    data = [{"ticket_id": str(1000 + n), "subject": f"subject number {n}"} for n in range(rows)]
    app = create_app(SimulatorConfig(limits={"*": ModelLimits(rpm=1_000_000)}, seed=28))
    home = root / f"repair-{repair}"
    home.mkdir()
    with running_simulator(app=app) as url:
        (home / "batchrun.toml").write_text(f'[endpoints.sim]\nbase_url = "{url}"\nauth = "none"\n')
        with batchrun.Client(f"sqlite:///{home / 'db.sqlite'}", env={}, cwd=home) as client:
            batch = client.submit_table(data, template=template, endpoint="sim", repair=repair)
            started_cpu, started = time.process_time(), time.perf_counter()
            client.run(batch.id, stop_on_signals=False, progress=False)
            cpu_s, wall_s = time.process_time() - started_cpu, time.perf_counter() - started
            status = client.status(batch.id)
            joined = client.results_table(batch.id).to_pylist()
    validator = Draft202012Validator(SCHEMA)
    valid = sum(
        1
        for record in joined
        if record["result_type"] == "succeeded" and validator.is_valid(json.loads(record["answer"]))
    )
    invalid_outputs = sum(1 for record in joined if record["error_type"] == "invalid_output")
    cost = status.cost_usd or 0.0
    repair_share = (status.repair_cost_usd or 0.0) / cost if cost else 0.0
    return (
        f"{repair:>6} {valid / rows:>9.1%} {invalid_outputs:>14} "
        f"{app.stats.received / rows:>9.2f} {status.repair_sends:>12} {repair_share:>12.1%} "
        f"{cpu_s / rows * 1000:>11.2f} {wall_s:>7.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--invalid", type=float, default=0.2)
    parser.add_argument("--repair", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(f"{args.rows} rows, {args.invalid:.0%} of structured answers invalid")
    print(
        f"{'repair':>6} {'valid':>9} {'invalid_output':>14} {'sends/row':>9} "
        f"{'repair sends':>12} {'repair cost':>12} {'CPU ms/row':>11} {'wall s':>7}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for repair in args.repair:
            print(run_once(args.rows, args.invalid, repair, Path(scratch)))


if __name__ == "__main__":
    main()
