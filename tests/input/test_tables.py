"""Reading tables row by row: CSV and TSV (quoted cells over several lines, ragged rows,
BOMs, sniffing), JSON lines, Parquet (typed cells, stored as JSON), and rows over the size
limit, whether on one line or many, refused without being held."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from batchrun.input.tables import (
    RowProblem,
    TableProblem,
    read_table,
    row_json,
    table_format_of,
)


def rows_of(content: bytes, table_format: str = "csv", max_row_bytes: int = 1000) -> list[Any]:
    stream = io.BufferedReader(io.BytesIO(content))  # type: ignore[arg-type]
    return list(
        read_table(
            stream, source="t", table_format=table_format, path=None, max_row_bytes=max_row_bytes
        )
    )


def test_a_quoted_cell_may_span_lines_and_rows_count_records_not_lines() -> None:
    content = b'\xef\xbb\xbfa,b\r\n1,"two\r\nlines"\r\n\r\n3,"say ""hi"""\r\n'

    assert rows_of(content) == [
        (1, {"a": "1", "b": "two\r\nlines"}),
        (2, {"a": "3", "b": 'say "hi"'}),
    ]


def test_a_row_with_more_or_fewer_cells_than_the_header_is_a_row_problem() -> None:
    items = rows_of(b"a,b\n1,2,3\n4\n5,6\n")

    assert items[0] == (
        1,
        RowProblem(
            ("has 3 cells but the header names 2 columns; quote cells that hold the delimiter",)
        ),
    )
    assert items[1][0] == 2 and isinstance(items[1][1], RowProblem)
    assert items[2] == (3, {"a": "5", "b": "6"})


def test_a_row_over_the_limit_across_lines_is_refused_at_that_row() -> None:
    # An open quote swallows the lines below it: the row grows past the limit.
    content = b'a,b\n1,ok\n2,"open\n' + b"more text\n" * 200 + b'",end\n3,x\n'

    items = rows_of(content, max_row_bytes=500)

    assert items[0] == (1, {"a": "1", "b": "ok"})
    row_no, problem = items[1]
    assert row_no == 2 and isinstance(problem, TableProblem)
    assert "t: row 2 is 5" in problem.message  # 500-odd bytes read, not the 2,000
    assert "or is a quote left open above it?" in problem.message
    assert len(items) == 2


def test_an_unclosed_quote_at_the_end_is_a_table_problem() -> None:
    items = rows_of(b'a,b\n1,"never closed\n')

    # The csv module takes the rest of the file as the cell; the row is still read.
    assert items == [(1, {"a": "1", "b": "never closed\n"})]


def test_tsv_json_lines_and_their_problems() -> None:
    assert rows_of(b"a\tb\nx,y\tz\n", "tsv") == [(1, {"a": "x,y", "b": "z"})]
    items = rows_of(b'{"a": 1, "b": [1, 2]}\n\n[1]\n{bad\n{"a": "caf\xe9"}\n', "jsonl")
    assert items[0] == (1, {"a": 1, "b": [1, 2]})
    assert items[1] == (
        2,
        RowProblem(("must be a JSON object of column names and values, not list",)),
    )
    assert items[2][1].problems[0].startswith("is not valid JSON")  # type: ignore[union-attr]
    assert items[3] == (4, RowProblem(("is not valid UTF-8 at byte 11; save the file as UTF-8",)))


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("x.CSV", b"{", "csv"),
        ("x.tab", b"", "tsv"),
        ("x.ndjson", b"", "jsonl"),
        ("x.pq", b"", "parquet"),
        ("-", b'  {"a": 1}\n', "jsonl"),
        ("-", b"a\tb,c\n", "tsv"),
        ("-", b"a,b\tc\n", "csv"),
        ("data.txt", b"PAR1....", "parquet"),
    ],
)
def test_the_format_comes_from_the_extension_else_the_first_bytes(
    name: str, head: bytes, expected: str
) -> None:
    stream = io.BufferedReader(io.BytesIO(head))  # type: ignore[arg-type]
    assert table_format_of(name, stream, None) == expected


def test_parquet_rows_keep_their_types_and_are_stored_as_json(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "n": 1,
            "when": datetime(2026, 12, 7, 12, 30),
            "day": date(2026, 1, 2),
            "price": Decimal("1.50"),
            "blob": b"\x00\xff",
            "note": None,
            "tags": ["a"],
        },
        {"n": 2, "when": None, "day": None, "price": None, "blob": None, "note": "x", "tags": []},
    ]
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("n", pa.int64()),
                ("when", pa.timestamp("us")),
                ("day", pa.date32()),
                ("price", pa.decimal128(5, 2)),
                ("blob", pa.binary()),
                ("note", pa.string()),
                ("tags", pa.list_(pa.string())),
            ]
        ),
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=1)

    items = list(
        read_table(None, source="t", table_format="parquet", path=str(path), max_row_bytes=1000)
    )

    assert [row for _, row in items] == rows
    assert json.loads(row_json(rows[0])) == {
        "n": 1,
        "when": "2026-12-07T12:30:00",
        "day": "2026-01-02",
        "price": "1.50",
        "blob": "AP8=",
        "note": None,
        "tags": ["a"],
    }


def test_parquet_from_standard_input_and_an_empty_parquet_are_table_problems(
    tmp_path: Path,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.string())}), path)

    (stdin,) = list(
        read_table(None, source="<stdin>", table_format="parquet", path="-", max_row_bytes=10)
    )
    (empty,) = list(
        read_table(None, source="e", table_format="parquet", path=str(path), max_row_bytes=10)
    )

    assert stdin[1] == TableProblem(
        "<stdin>: Parquet cannot be read from standard input; pass the file's path"
    )
    assert empty[1] == TableProblem("e has no rows")


def test_without_pyarrow_a_parquet_table_is_refused_in_one_line(tmp_path: Path) -> None:
    # A fresh interpreter in which pyarrow cannot be imported, as where it is not installed.
    code = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
        "from batchrun.errors import InputFileError\n"
        "from batchrun.input.tables import read_table\n"
        "try:\n"
        "    list(read_table(None, source='t', table_format='parquet', path='t.parquet',"
        " max_row_bytes=10))\n"
        "except InputFileError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=None,
    )

    assert (
        done.stdout
        == "reading Parquet needs pyarrow: pip install pyarrow (or 'batchrun-llm[parquet]')\n"
    )
