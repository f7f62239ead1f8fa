"""Tables already in memory (``Client.submit_table``): a pandas DataFrame, a pyarrow Table
or an iterable of dicts, read one row at a time as `batchrun.input.tables` reads a file;
and the answer schema given as a Pydantic model class.

Rows come as `TableItem` s, numbered from 1 in the data's order, so that every problem is
named ``<DataFrame>:row N`` as a file's is ``tickets.csv:row N``. A DataFrame and a pyarrow
Table are read a slice at a time (:data:`FRAME_SLICE_ROWS`); their cells become plain Python
values (numpy scalars as ints, floats and bools; NaN, NaT and ``pd.NA`` as None; times as
datetimes), as a Parquet file's are. Neither library is imported here: the data is already
one of theirs, and its own methods are used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeAlias

from batchrun.errors import ConfigError, InputFileError
from batchrun.input.tables import RowProblem, TableItem, TableProblem
from batchrun.structured.schemas import check_schema

# What `submit_table` takes: a path ("-": standard input), a pandas DataFrame, a pyarrow
# Table (or RecordBatch), or an iterable of rows as dicts (column name to value).
TableData: TypeAlias = str | os.PathLike[str] | Iterable[Mapping[str, Any]] | Any
# Rows converted at a time from a DataFrame or pyarrow Table.
FRAME_SLICE_ROWS = 1024
# What `submit_table(output=...)` takes: a Pydantic model class, a JSON Schema as a mapping,
# or the path of a JSON file holding one.
OutputSchema: TypeAlias = type[Any] | Mapping[str, Any] | str | os.PathLike[str]
_NULL_TYPES = frozenset({"NaTType", "NAType"})


def data_rows(data: object) -> tuple[str, Iterator[TableItem]]:
    """The name problems are reported under and the rows of in-memory ``data``."""
    module = type(data).__module__.split(".")[0]
    if module == "pandas" and hasattr(data, "iloc"):
        return "<DataFrame>", _frame_rows(data)
    if module == "pyarrow" and hasattr(data, "to_batches"):
        return "<pyarrow Table>", _arrow_rows(data.to_batches(max_chunksize=FRAME_SLICE_ROWS))
    if module == "pyarrow" and hasattr(data, "to_pylist"):
        return "<pyarrow Table>", _arrow_rows([data])
    if isinstance(data, Mapping | bytes | bytearray) or not isinstance(data, Iterable):
        raise InputFileError(
            "a table is a path, a pandas DataFrame, a pyarrow Table or an iterable of rows as "
            f"dicts, not a single {type(data).__name__}"
        )
    return "<rows>", _dict_rows(data)


def _frame_rows(frame: Any) -> Iterator[TableItem]:
    names = [str(name) for name in frame.columns]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        yield 0, TableProblem(f"the DataFrame has two columns named {duplicate!r}; rename one")
        return
    row_no = 0
    for start in range(0, len(frame), FRAME_SLICE_ROWS):
        part = frame.iloc[start : start + FRAME_SLICE_ROWS]
        for values in part.itertuples(index=False, name=None):
            row_no += 1
            yield row_no, {name: _plain(value) for name, value in zip(names, values, strict=True)}
    if row_no == 0:
        yield 0, TableProblem("the DataFrame has no rows")


def _arrow_rows(batches: Iterable[Any]) -> Iterator[TableItem]:
    row_no = 0
    for batch in batches:
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row
    if row_no == 0:
        yield 0, TableProblem("the pyarrow Table has no rows")


def _dict_rows(rows: Iterable[Any]) -> Iterator[TableItem]:
    row_no = 0
    for row in rows:
        row_no += 1
        if isinstance(row, Mapping):
            yield row_no, {str(name): value for name, value in row.items()}
        else:
            yield (
                row_no,
                RowProblem(
                    (f"must be a dict of column names and values, not {type(row).__name__}",)
                ),
            )
    if row_no == 0:
        yield 0, TableProblem("the rows are empty; give at least one dict")


def _plain(value: Any) -> Any:
    """A DataFrame cell as a plain Python value (see the module docstring)."""
    if value is None or type(value).__name__ in _NULL_TYPES:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        plain = value.item()
        return None if isinstance(plain, float) and math.isnan(plain) else plain
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    return value


def model_schema(model: type[Any]) -> dict[str, Any]:
    """The JSON Schema of a Pydantic model class, as structured outputs take it: every
    object closed (``additionalProperties: false``, which the API requires and Pydantic
    leaves out), checked as a template's ``[output]`` is."""
    schema_of = getattr(model, "model_json_schema", None)
    if not callable(schema_of):
        raise ConfigError(f"output must be a Pydantic model class or a JSON Schema, not {model!r}")
    schema = _closed(schema_of())
    name = getattr(model, "__name__", "the model")
    return check_schema(schema, where=f"output={name}")


def _closed(node: Any) -> Any:
    if isinstance(node, dict):
        closed = {key: _closed(value) for key, value in node.items()}
        if closed.get("type") == "object" and "properties" in closed:
            closed.setdefault("additionalProperties", False)
        return closed
    if isinstance(node, list):
        return [_closed(item) for item in node]
    return node
