"""The Python API speaks tables: submit_table takes a DataFrame, a pyarrow Table or dicts
and a Pydantic model as the answer's schema; results_table / results_frame give the joined
results back in input order; parsed yields (row, model or None). pandas and pyarrow are
optional: without them, one line says what to install."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

import batchrun
from batchrun.errors import InputFileError
from batchrun.store.store import Store


class Origin(BaseModel):
    channel: Literal["mail", "phone"]
    score: float


class Triage(BaseModel):
    category: Literal["billing", "bug", "account", "other"]
    priority: int
    summary: str
    origin: Origin
    tags: list[str] | None = None


TEMPLATE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 400,
    "system": "Triage. [[sim:invalid_output=0.25]]",
    "user": "Ticket {{ ticket_id }}: {{ subject }}",
    "id": "t-{{ ticket_id }}",
}


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[batchrun.Client]:
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def frame(count: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ticket_id": [500 - 3 * n for n in range(count)],
            "subject": [f"subject {n}" for n in range(count)],
            "weight": [None if n % 4 == 0 else n / 2 for n in range(count)],
            "vip": [n % 2 == 0 for n in range(count)],
        }
    )


def test_a_dataframe_in_and_out_with_a_pydantic_model(
    client: batchrun.Client, store: Store
) -> None:
    df = frame(40)
    # No repairs: the answers that do not match stay as sent, so parsed() meets them.
    batch = client.submit_table(
        df, template=TEMPLATE, output=Triage, endpoint="simulator", repair=0
    )
    client.run(batch.id, stop_on_signals=False)

    out = client.results_table(batch.id).to_pandas()
    same = client.results_frame(batch.id)
    pairs = list(client.parsed(batch.id, model=Triage))

    pd.testing.assert_frame_equal(out, same)
    pd.testing.assert_frame_equal(out[list(df.columns)], df, check_dtype=False)
    assert list(out["custom_id"]) == [f"t-{500 - 3 * n}" for n in range(40)]
    # The schema sent is the model's, every object closed as structured outputs require.
    sent = json.loads(store.results.answer_params(batch.id) or "{}")["output_config"]["format"][
        "schema"
    ]
    assert sent["additionalProperties"] is False
    assert sent["$defs"]["Origin"]["additionalProperties"] is False
    validator = Draft202012Validator(sent)
    valid = 0
    for (row, answer), (_, joined) in zip(pairs, out.iterrows(), strict=True):
        assert row == {
            "ticket_id": joined["ticket_id"],
            "subject": joined["subject"],
            "weight": None if pd.isna(joined["weight"]) else joined["weight"],
            "vip": joined["vip"],
        }
        try:
            value = json.loads(joined["text"])
        except (ValueError, TypeError):  # not JSON, or no text (null: an errored row)
            value = None
        if value is not None and validator.is_valid(value):
            valid += 1
            assert answer == Triage.model_validate(value)
            assert joined["answer_category"] == value["category"]
            assert joined["answer_origin"] == value["origin"]
        else:
            assert answer is None and joined["error_type"] == "invalid_output"
            assert pd.isna(joined["answer_priority"])
    assert 40 - 22 <= valid <= 40 - 2  # a 25 % invalid share, far from chance's edges


def test_a_pyarrow_table_and_dicts_make_the_same_requests_as_the_dataframe(
    client: batchrun.Client,
) -> None:
    df = frame(5)
    template = {**TEMPLATE, "system": "Triage."}
    batches = [
        client.submit_table(data, template=template, output=Triage, endpoint="simulator")
        for data in (df, pa.Table.from_pandas(df), iter(df.to_dict("records")))
    ]
    for batch in batches:
        client.run(batch.id, stop_on_signals=False)

    tables = [client.results_table(b.id).select(list(df.columns)).to_pylist() for b in batches]
    assert tables[0] == tables[1] == tables[2]
    assert [row["ticket_id"] for row in tables[0]] == list(df["ticket_id"])
    answers = [[answer for _, answer in client.parsed(b.id, model=Triage)] for b in batches]
    assert all(answer is not None for answer in answers[0]) and answers[0] == answers[1]


def test_rows_that_are_not_dicts_and_empty_frames_are_refused_naming_the_row(
    client: batchrun.Client,
) -> None:
    with pytest.raises(InputFileError) as bad_row:
        client.submit_table(
            [{"ticket_id": 1, "subject": "a"}, ["not", "a", "dict"]],
            template=TEMPLATE,
            endpoint="simulator",
        )
    with pytest.raises(InputFileError, match="the DataFrame has no rows"):
        client.submit_table(frame(0), template=TEMPLATE, endpoint="simulator")
    with pytest.raises(InputFileError) as missing:
        client.submit_table(
            pd.DataFrame({"ticket_id": [1]}), template=TEMPLATE, endpoint="simulator"
        )

    assert "<rows>:row 2: must be a dict of column names and values, not list" in str(bad_row.value)
    assert "<DataFrame>:row 1:" in str(missing.value) and "'subject'" in str(missing.value)
    assert client.list() == []


def test_a_json_schema_mapping_is_an_output_too(client: batchrun.Client) -> None:
    schema = {
        "type": "object",
        "required": ["n"],
        "additionalProperties": False,
        "properties": {"n": {"type": "integer"}},
    }
    batch = client.submit_table(
        [{"ticket_id": 1, "subject": "a"}],
        template={**TEMPLATE, "system": "x"},
        output=schema,
        endpoint="simulator",
    )
    client.run(batch.id, stop_on_signals=False)

    table = client.results_table(batch.id)
    assert table.schema.field("answer_n").type == pa.int64()
    assert isinstance(table.column("answer_n")[0].as_py(), int)
    flat = client.results_table(batch.id, with_input=False)
    assert flat.num_rows == 1 and "batch_id" in flat.schema.names


def _without(module: str, code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = f"import sys; sys.modules[{module!r}] = None\n" + code
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    ("module", "call", "message"),
    [
        (
            "pyarrow",
            "client.results_table(batch.id)",
            "results_table needs pyarrow: pip install pyarrow (or 'batchrun-llm[parquet]')",
        ),
        (
            "pandas",
            "client.results_frame(batch.id)",
            "results_frame needs pandas: pip install pandas (or 'batchrun-llm[pandas]')",
        ),
    ],
)
def test_a_missing_extra_is_one_line_saying_what_to_install(
    tmp_path: Path, module: str, call: str, message: str
) -> None:
    code = f"""
import batchrun
with batchrun.Client("sqlite:///{tmp_path}/db.sqlite", env={{"HOME": "."}}, cwd=".") as client:
    batch = client.submit_table(
        [{{"w": "a"}}],
        template={{"model": "claude-sonnet-4-5", "max_tokens": 5, "user": "{{{{ w }}}}"}},
        endpoint="simulator",
    )
    client.run(batch.id, stop_on_signals=False)
    try:
        {call}
    except batchrun.MissingExtraError as exc:
        print(type(exc).__name__, exc.module, str(exc), sep="|")
"""
    ran = _without(module, code, tmp_path)

    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"MissingExtraError|{module}|{message}\n"


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_tables_pages_python_example_and_duckdb_query_run_as_they_are(tmp_path: Path) -> None:
    import os

    import duckdb

    page = (DOCS / "tables.md").read_text()
    section = page.split("## In Python\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    expected = section.split("```text\n", 1)[1].split("```", 1)[0]
    query = page.split("```sql\n", 1)[1].split("```", 1)[0]
    joined_section = page.split("## Results joined to their rows\n", 1)[1]
    reading = joined_section.split("```python\n", 1)[1].split("```", 1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHRUN_", "ANTHROPIC_"))}

    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == expected
    read = subprocess.run(
        [sys.executable, "-c", reading],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.startswith("answer_category\n")
    with duckdb.connect() as db:
        db.execute(f"SET file_search_path = '{tmp_path}'")
        rows = db.execute(query).fetchall()
    assert sum(count for _, count, _, _ in rows) == 3
    assert all(category in {"billing", "bug", "account", "other"} for category, *_ in rows)
    assert all(mean is not None and cost > 0 for _, _, mean, cost in rows)


def test_dates_come_back_as_iso_text_and_a_stricter_model_gives_none(
    client: batchrun.Client,
) -> None:
    import datetime as dt

    class Strict(BaseModel):
        category: Literal["nothing the simulator says"]

    data = pa.table(
        {
            "ticket_id": [1, 2],
            "subject": ["a", "b"],
            "opened": [dt.date(2026, 1, 2), None],
        }
    )
    batch = client.submit_table(
        data, template={**TEMPLATE, "system": "x"}, output=Triage, endpoint="simulator"
    )
    client.run(batch.id, stop_on_signals=False)

    table = client.results_table(batch.id)
    strict = list(client.parsed(batch.id, model=Strict))
    loose = list(client.parsed(batch.id, model=Triage))

    assert table.schema.field("opened").type == pa.string()
    assert table.column("opened").to_pylist() == ["2026-01-02", None]
    assert [answer for _, answer in strict] == [None, None]
    assert all(isinstance(answer, Triage) for _, answer in loose)
    assert [row for row, _ in strict] == [
        {"ticket_id": 1, "subject": "a", "opened": "2026-01-02"},
        {"ticket_id": 2, "subject": "b", "opened": None},
    ]
