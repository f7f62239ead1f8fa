"""Column types of the joined export, table-driven: what a JSON Schema property becomes in
Parquet, how input values are typed, and how a value is made to fit its column."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from pydantic import BaseModel

from batchrun.export.shapes import (
    BOOL,
    FLOAT64,
    INT64,
    JSON,
    STRING,
    Shape,
    arrow_type,
    column_shape,
    fit,
    schema_shape,
    value_kind,
)
from batchrun.input.frames import model_schema

CASES: list[tuple[dict[str, Any], Shape]] = [
    ({"type": "string"}, STRING),
    ({"type": "string", "enum": ["a", "b"]}, STRING),
    ({"enum": ["a", "b", None]}, STRING),
    ({"enum": [1, 2]}, INT64),
    ({"enum": [1, 2.5]}, FLOAT64),
    ({"enum": [1, "a"]}, JSON),
    ({"const": True}, BOOL),
    ({"type": "integer"}, INT64),
    ({"type": ["integer", "null"]}, INT64),
    ({"type": ["integer", "number"]}, FLOAT64),
    ({"type": ["integer", "string"]}, JSON),
    ({"type": "number"}, FLOAT64),
    ({"type": "boolean"}, BOOL),
    ({"anyOf": [{"type": "string"}, {"type": "null"}]}, STRING),
    ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, JSON),
    ({"type": "array", "items": {"type": "integer"}}, ("list", INT64)),
    ({"type": "array"}, JSON),
    ({"type": "object"}, JSON),
    ({"type": "object", "additionalProperties": {"type": "string"}}, JSON),
    (
        {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}},
        ("struct", (("a", STRING), ("b", FLOAT64))),
    ),
    ({}, JSON),
    ({"$ref": "#/$defs/missing"}, JSON),
    ({"not": {"type": "string"}}, JSON),
]


@pytest.mark.parametrize(("node", "shape"), CASES, ids=[str(c[0]) for c in CASES])
def test_a_schema_property_has_the_column_shape_of_its_values(
    node: dict[str, Any], shape: Shape
) -> None:
    assert schema_shape(node, {}) == shape
    arrow_type(pa, shape)  # every shape has a pyarrow type


def test_refs_resolve_and_a_recursive_one_is_json_text() -> None:
    root = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "child": {"$ref": "#/$defs/Node"}},
            }
        }
    }

    shape = schema_shape({"$ref": "#/$defs/Node"}, root)

    assert shape == ("struct", (("name", STRING), ("child", JSON)))


def test_a_pydantic_models_schema_gives_struct_and_list_columns() -> None:
    class Inner(BaseModel):
        score: float

    class Outer(BaseModel):
        inner: Inner
        maybe: int | None = None
        items: list[Inner]

    schema = model_schema(Outer)
    shapes = {name: schema_shape(node, schema) for name, node in schema["properties"].items()}

    assert shapes == {
        "inner": ("struct", (("score", FLOAT64),)),
        "maybe": INT64,
        "items": ("list", ("struct", (("score", FLOAT64),))),
    }
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Inner"]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("shape", "value", "fitted"),
    [
        (INT64, 3, 3),
        (INT64, 3.0, 3),
        (INT64, 3.5, None),
        (INT64, True, None),
        (INT64, 2**70, None),  # beyond 64 bits: null here, the answer column keeps it
        (FLOAT64, 2, 2.0),
        (FLOAT64, "2", None),
        (STRING, 5, None),
        (BOOL, 1, None),
        (JSON, {"a": [1, "é"]}, '{"a":[1,"é"]}'),
        (JSON, "text", "text"),
        (("list", INT64), [1, 2.0, "x"], [1, 2, None]),
        (("struct", (("a", STRING),)), {"a": "x", "extra": 1}, {"a": "x"}),
        (("struct", (("a", STRING),)), "not an object", None),
    ],
)
def test_a_value_fits_its_column_or_is_null(shape: Shape, value: Any, fitted: Any) -> None:
    assert fit(shape, value) == fitted


@pytest.mark.parametrize(
    ("values", "shape"),
    [
        ([None, None], STRING),
        (["a", None], STRING),
        ([1, 2], INT64),
        ([1, 2.5], FLOAT64),
        ([True, None], BOOL),
        ([True, 1], JSON),
        ([1, "a"], JSON),
        ([{"a": 1}], JSON),
        ([2**64], JSON),
    ],
)
def test_an_input_column_is_typed_by_its_values(values: list[Any], shape: Shape) -> None:
    kinds = {kind for value in values if (kind := value_kind(value)) is not None}
    assert column_shape(kinds) == shape
