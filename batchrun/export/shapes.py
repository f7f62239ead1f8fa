"""Column types for the joined export: what a JSON Schema property, or an input column's
values, become in Parquet (and in the pyarrow Table of ``Client.results_table``).

A *shape* is a small type tree, worked out without pyarrow (so CSV and JSON exports do not
load it): ``"string"``, ``"int64"``, ``"float64"``, ``"bool"``, ``"json"`` (JSON text: a
value whose schema has no single type), ``("list", item)`` or ``("struct", ((name, shape),
...))``. :func:`schema_shape` reads a schema node: ``type`` (a nullable ``["x", "null"]``
too), ``enum``/``const`` of one kind, ``anyOf``/``oneOf`` of one type besides ``null``
(Pydantic's ``Optional``), local ``$ref`` into ``$defs``/``definitions`` (not recursive
ones), ``items`` of an array and ``properties`` of an object. Anything else is ``json``.

:func:`fit` makes a value fit its shape; a value that does not (an integer beyond 64 bits,
a string where the schema said number) is null there: the ``answer`` column keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import orjson

Shape: TypeAlias = str | tuple[str, Any]
STRING, INT64, FLOAT64, BOOL, JSON = "string", "int64", "float64", "bool", "json"
_SCALARS = {"string": STRING, "integer": INT64, "number": FLOAT64, "boolean": BOOL}
# Deeper schemas than this are JSON text (a bound on the walk, whatever a schema holds).
_MAX_DEPTH = 32
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def schema_shape(node: object, root: Mapping[str, Any]) -> Shape:
    """The shape of values that match the schema ``node``; ``root`` is the whole schema,
    for ``$ref``. See the module docstring."""
    return _shape(node, root, 0, frozenset())


def _shape(node: object, root: Mapping[str, Any], depth: int, refs: frozenset[str]) -> Shape:
    if depth > _MAX_DEPTH or not isinstance(node, Mapping):
        return JSON
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = _resolve(ref, root)
        if target is None or ref in refs:
            return JSON
        return _shape(target, root, depth + 1, refs | {ref})
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list):
            real = [o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")]
            return _shape(real[0], root, depth + 1, refs) if len(real) == 1 else JSON
    every = node.get("allOf")
    if isinstance(every, list) and len(every) == 1:
        return _shape(every[0], root, depth + 1, refs)
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = {k for k in kind if k != "null"}
        kind = (
            kinds.pop()
            if len(kinds) == 1
            else ("number" if kinds == {"integer", "number"} else None)
        )
    if kind is None:
        values = node["enum"] if isinstance(node.get("enum"), list) else None
        if "const" in node:
            values = [node["const"]]
        if values is not None:
            return _values_shape(values)
        kind = "object" if isinstance(node.get("properties"), Mapping) else None
    if isinstance(kind, str) and kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = node.get("items")
        return (
            ("list", _shape(items, root, depth + 1, refs)) if isinstance(items, Mapping) else JSON
        )
    if kind == "object":
        properties = node.get("properties")
        if isinstance(properties, Mapping) and properties:
            return (
                "struct",
                tuple(
                    (str(name), _shape(sub, root, depth + 1, refs))
                    for name, sub in properties.items()
                ),
            )
    return JSON


def _resolve(ref: str, root: Mapping[str, Any]) -> object:
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            defs = root.get(prefix[2:-1])
            return defs.get(ref[len(prefix) :]) if isinstance(defs, Mapping) else None
    return None


def _values_shape(values: Sequence[object]) -> Shape:
    """The shape of an ``enum``'s values, if they are all of one scalar kind."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, str) for v in present):
        return STRING
    if present and all(isinstance(v, bool) for v in present):
        return BOOL
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return INT64
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return FLOAT64
    return JSON


def value_kind(value: object) -> str | None:
    """The kind of an input cell, for :func:`column_shape`: None for a null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT64 if _INT64_MIN <= value <= _INT64_MAX else JSON
    if isinstance(value, float):
        return FLOAT64
    if isinstance(value, str):
        return STRING
    return JSON


def column_shape(kinds: set[str]) -> Shape:
    """The shape of an input column whose cells were of these kinds: one kind is that
    type (integers and floats: float64); none (every cell null) string; a mix is text
    (strings as they are, other values as JSON)."""
    if not kinds:
        return STRING
    if kinds == {INT64, FLOAT64}:
        return FLOAT64
    if len(kinds) == 1:
        return next(iter(kinds))
    return JSON


def fit(shape: Shape, value: Any) -> Any:
    """``value`` as a column of ``shape`` holds it: converted where it is the same number
    (``2.0`` in an integer column), JSON text for ``json``, null where it does not fit."""
    if value is None:
        return None
    if shape == JSON:
        if isinstance(value, str):
            return value
        return json_text(value)
    if shape == STRING:
        return value if isinstance(value, str) else None
    if shape == BOOL:
        return value if isinstance(value, bool) else None
    if shape == INT64:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value if _INT64_MIN <= value <= _INT64_MAX else None
        return None
    if shape == FLOAT64:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                return None
        return None
    assert isinstance(shape, tuple)
    tag, inner = shape
    if tag == "list":
        return [fit(inner, item) for item in value] if isinstance(value, list) else None
    if not isinstance(value, Mapping):
        return None
    return {name: fit(sub, value.get(name)) for name, sub in inner}


def json_text(value: Any) -> str:
    """A value as compact JSON text (non-ASCII kept)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def arrow_type(pa: Any, shape: Shape) -> Any:
    """The pyarrow type of a shape."""
    scalars = {
        STRING: pa.string(),
        JSON: pa.string(),
        INT64: pa.int64(),
        FLOAT64: pa.float64(),
        BOOL: pa.bool_(),
    }
    if isinstance(shape, str):
        return scalars[shape]
    tag, inner = shape
    if tag == "list":
        return pa.list_(arrow_type(pa, inner))
    return pa.struct([pa.field(name, arrow_type(pa, sub)) for name, sub in inner])
