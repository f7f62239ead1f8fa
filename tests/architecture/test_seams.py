"""The dispatcher's seams name only abstract types: Protocols and plain values (as httpx's
transport base names only ``Request`` and ``Response``), never a class with behaviour, so no
module depends on the dispatcher through its seams, not even for types."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any, Protocol

import batchrun.dispatch.seams as seams

SEAMS = Path(seams.__file__)


def _imported() -> dict[str, Any]:
    """Every name ``seams.py`` imports (under ``TYPE_CHECKING`` too), resolved."""
    found: dict[str, Any] = {}
    for node in ast.walk(ast.parse(SEAMS.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            module = importlib.import_module(node.module)
            for alias in node.names:
                found[f"{node.module}.{alias.name}"] = getattr(module, alias.name)
    return found


def _is_protocol(value: Any) -> bool:
    return inspect.isclass(value) and bool(getattr(value, "_is_protocol", False))


def test_the_seams_import_nothing_from_the_dispatcher() -> None:
    modules = {name.rsplit(".", 1)[0] for name in _imported()}
    assert "batchrun.dispatch.dispatcher" not in modules


def test_the_seams_name_only_protocols_and_plain_values() -> None:
    concrete = [
        name
        for name, value in _imported().items()
        if inspect.isclass(value)
        and value is not Protocol
        and not _is_protocol(value)
        and not dataclasses.is_dataclass(value)
    ]
    assert concrete == []


def test_every_class_the_seams_define_is_a_protocol() -> None:
    defined = [
        value
        for value in vars(seams).values()
        if inspect.isclass(value) and value.__module__ == seams.__name__
    ]
    assert defined and all(_is_protocol(value) for value in defined)
