"""One place per fact in the store: usage by model is summed by one function
(``batchrun.store.usage``), answers per time bucket by one (``batchrun.store.series``) with
one list of throttle error types."""

from __future__ import annotations

import ast
from pathlib import Path

import batchrun.store

STORE = Path(batchrun.store.__file__).parent
THROTTLE_TYPES = {"rate_limit_error", "overloaded_error"}


def _modules() -> dict[str, ast.Module]:
    return {path.name: ast.parse(path.read_text()) for path in sorted(STORE.glob("*.py"))}


def _functions_that(test: object, module: ast.Module) -> set[str]:
    assert callable(test)
    return {
        node.name
        for node in ast.walk(module)
        if isinstance(node, ast.FunctionDef) and any(test(inner) for inner in ast.walk(node))
    }


def _sums_cache_reads(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "sum"
        and any(
            isinstance(part, ast.Attribute) and part.attr == "cache_read_input_tokens"
            for arg in node.args
            for part in ast.walk(arg)
        )
    )


def _buckets_time(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "epoch_bucket"
    )


def test_token_usage_is_summed_by_one_function_besides_the_batch_totals() -> None:
    found = {
        (name, function)
        for name, module in _modules().items()
        for function in _functions_that(_sums_cache_reads, module)
    }
    # A batch's token totals for its summary are maintained counters (counters.py). The
    # batch lane's cache refreshes are not results: their tokens (one row per prompt-cache
    # group) are summed apart, as the overhead they are.
    assert found == {("usage.py", "read_usage"), ("cache_warmth.py", "totals")}


def test_time_buckets_are_cut_in_the_series_and_usage_modules_only() -> None:
    found = {name for name, module in _modules().items() if _functions_that(_buckets_time, module)}
    assert found == {"series.py", "usage.py"}


def test_the_throttle_error_types_are_listed_once() -> None:
    found = [
        (name, node.lineno)
        for name, module in _modules().items()
        for node in ast.walk(module)
        if isinstance(node, ast.Constant) and node.value in THROTTLE_TYPES
    ]
    assert [name for name, _ in found] == ["series.py", "series.py"]
