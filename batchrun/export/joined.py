"""Results joined to their rows (``results --with-input``, ``Client.results_table``,
``Client.parsed``): one record per input row, in input order.

The columns: the input columns unchanged (in the order first seen), then
:data:`RESULT_COLUMNS` (``custom_id``, ``result_type``, ``error_type``, ``error_message``,
``text``, ``answer``: the parsed answer), then one column per top-level property of the
answer schema, named :data:`ANSWER_PREFIX` + the property (``answer_category``), then
:data:`USAGE_COLUMNS` (tokens, ``cost_usd`` and ``repair_sends``: every answer the request
paid for, its repaired invalid answers included, as the flat export counts them). A result
column whose name an input column already has gets a ``_`` in front until it is unique
(``text`` → ``_text``): input columns are never renamed.

``result_type`` is the request's end (``succeeded``, ``errored``, ``canceled``,
``expired``), null while it is not finished. The answer (and its columns) is set only for a
succeeded request whose answer matches the schema; a succeeded answer that does not gets
``error_type`` ``invalid_output`` and the validation errors in ``error_message``. Rows that
failed or are not finished keep their input columns, with nulls for the answer.

Two passes, both streamed from the store: :func:`survey` reads the stored rows once for
the input columns and their kinds (a CSV's are strings; JSON lines keep their types), then
:func:`joined_records` builds the records. Nothing holds more than one chunk of rows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batchrun.config.prices import PriceTable
from batchrun.export.flat import flat_values
from batchrun.export.shapes import (
    JSON,
    STRING,
    Shape,
    column_shape,
    json_text,
    schema_shape,
    value_kind,
)
from batchrun.records import ResultDetail
from batchrun.structured.answers import ValidAnswer, read_answer
from batchrun.structured.schemas import StructuredMode, asked_schema

ANSWER_PREFIX = "answer_"
RESULT_COLUMNS = ("custom_id", "result_type", "error_type", "error_message", "text", "answer")
USAGE_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost_usd",
    "repair_sends",
)
_FINAL_STATES = frozenset({"succeeded", "errored", "canceled", "expired"})
INVALID_OUTPUT = "invalid_output"
# Table rows read per page in the survey.
SURVEY_PAGE_ROWS = 1000


@dataclass(frozen=True)
class AnswerSpec:
    """The schema a batch's answers are read with, and how it was asked (None: no schema)."""

    schema: dict[str, Any] | None = None
    mode: StructuredMode | None = None

    @classmethod
    def of_params(cls, params_json: str | None) -> AnswerSpec:
        """The spec of a request's stored params (JSON), as `asked_schema` reads them."""
        if params_json is None:
            return cls()
        params = orjson.loads(params_json)
        asked = asked_schema(params) if isinstance(params, dict) else None
        return cls() if asked is None else cls(asked[0], asked[1])

    def properties(self) -> tuple[tuple[str, Shape], ...]:
        """The schema's top-level properties with their shapes, in the schema's order."""
        if self.schema is None or not isinstance(self.schema.get("properties"), Mapping):
            return ()
        return tuple(
            (str(name), schema_shape(node, self.schema))
            for name, node in self.schema["properties"].items()
        )

    def read(self, row: ResultDetail) -> tuple[bool, Any, str | None]:
        """``(valid, answer, errors)`` of a row: the answer of a succeeded row that matches
        the schema (without a schema: any succeeded row, its answer null); else not valid,
        with the validation errors of a succeeded answer that does not match."""
        if row.state != "succeeded" or row.body is None:
            return False, None, None
        if self.schema is None or self.mode is None:
            return True, None, None
        message = orjson.loads(row.body)
        if not isinstance(message, dict):
            return False, None, "the stored answer is not a Message"
        answer = read_answer(message, self.schema, self.mode)
        if isinstance(answer, ValidAnswer):
            return True, answer.value, None
        return False, None, "; ".join(answer.errors)


@dataclass(frozen=True)
class JoinedLayout:
    """The joined columns: each output name with where its value comes from and its shape
    (``input``: the input column; ``result``: a result column; ``answer``: a property)."""

    columns: tuple[tuple[str, str, str, Shape], ...]
    spec: AnswerSpec

    @property
    def names(self) -> tuple[str, ...]:
        """The output column names, in order."""
        return tuple(name for name, _, _, _ in self.columns)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The input columns, in order."""
        return tuple(key for _, source, key, _ in self.columns if source == "input")


def survey(page: Callable[[int], list[tuple[int, str]]]) -> dict[str, Shape]:
    """The input columns of the stored rows, in the order first seen, with their shapes;
    ``page(after_row_no)`` gives the next rows (the store's table rows, a page at a time)."""
    kinds: dict[str, set[str]] = {}
    after = 0
    while rows := page(after):
        for row_no, data in rows:
            after = row_no
            row = orjson.loads(data)
            if not isinstance(row, dict):
                continue
            for name, value in row.items():
                seen = kinds.setdefault(name, set())
                kind = value_kind(value)
                if kind is not None:
                    seen.add(kind)
    return {name: column_shape(found) for name, found in kinds.items()}


def layout(inputs: Mapping[str, Shape], spec: AnswerSpec) -> JoinedLayout:
    """The columns for these input columns and answer schema (see the module docstring)."""
    taken = set(inputs)
    columns: list[tuple[str, str, str, Shape]] = [
        (name, "input", name, shape) for name, shape in inputs.items()
    ]

    def free(name: str) -> str:
        while name in taken:
            name = "_" + name
        taken.add(name)
        return name

    result_shapes: dict[str, Shape] = {"answer": JSON}
    for column in RESULT_COLUMNS:
        columns.append((free(column), "result", column, result_shapes.get(column, STRING)))
    for prop, shape in spec.properties():
        columns.append((free(ANSWER_PREFIX + prop), "answer", prop, shape))
    for column in USAGE_COLUMNS:
        shape = "float64" if column == "cost_usd" else "int64"
        columns.append((free(column), "result", column, shape))
    return JoinedLayout(tuple(columns), spec)


def joined_records(
    pairs: Iterable[tuple[ResultDetail, str | None]], prices: PriceTable, plan: JoinedLayout
) -> Generator[dict[str, Any], None, None]:
    """One record per row (the store's joined rows, in input order), keyed by the output column
    names, holding Python values as the answer and the rows have them (the ``answer``
    column: the parsed answer; answer columns: its properties)."""
    pending: deque[tuple[ResultDetail, str | None]] = deque()

    def details() -> Iterator[ResultDetail]:
        for detail, data in pairs:
            pending.append((detail, data))
            yield detail

    for flat in flat_values(details(), prices):
        detail, data = pending.popleft()
        row = orjson.loads(data) if data is not None else None
        valid, answer, errors = plan.spec.read(detail)
        error_type, error_message = detail.error_type, detail.error_message
        if errors is not None:
            error_type, error_message = INVALID_OUTPUT, errors
        results = {
            "custom_id": detail.custom_id,
            "result_type": detail.state if detail.state in _FINAL_STATES else None,
            "error_type": error_type,
            "error_message": error_message,
            "text": flat["text"],
            "answer": answer if valid else None,
            **{column: flat[column] for column in USAGE_COLUMNS},
        }
        record: dict[str, Any] = {}
        for name, source, key, _ in plan.columns:
            if source == "input":
                record[name] = row.get(key) if isinstance(row, dict) else None
            elif source == "result":
                record[name] = results[key]
            else:
                record[name] = answer.get(key) if valid and isinstance(answer, dict) else None
        yield record


def input_row(record: Mapping[str, Any], plan: JoinedLayout) -> dict[str, Any]:
    """The input columns of a joined record, by their own names."""
    return {key: record[name] for name, source, key, _ in plan.columns if source == "input"}


def answer_of(record: Mapping[str, Any], plan: JoinedLayout) -> Any:
    """The parsed answer of a joined record (None: none)."""
    for name, source, key, _ in plan.columns:
        if source == "result" and key == "answer":
            return record[name]
    return None


def text_cell(value: Any) -> Any:
    """A cell as text formats (CSV) write it: strings as they are, numbers as numbers,
    other values (booleans, lists, objects) as JSON text, null as None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return json_text(value)
