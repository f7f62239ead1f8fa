"""The limits in force that the dashboard and the report show are computed in one place:
a key's limit (the lowest of the flag or configured limit, the announced and the learned
one) and a batch's (summed over its keys, none when a key has none, capped per endpoint by
its limit across all its models) are
``batchrun.ops.views.run_limits``'s; a batch's rows of limits (``LimitUse``, recorded by a
run or its keys' now) are ``batchrun.ops.views.limits``'s, which the dashboard's card and
the report both read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import batchrun.ops
from batchrun.limits.families import ALL_MODELS
from batchrun.ops.views.run_limits import batch_limit, key_limit, summed_limit

OPS = Path(batchrun.ops.__file__).parent


def _defined(path: Path) -> set[str]:
    return {
        node.name
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
    }


def test_only_the_limits_views_define_the_limit_in_force_rules() -> None:
    rules = {
        "key_limit",
        "summed_limit",
        "batch_limit",
        "_summed",
        "_lowest",
        "_in_force",
        "measure_of",
        "_limit_uses",
        "_recorded_uses",
    }
    found = {
        path.relative_to(OPS).as_posix(): sorted(_defined(path) & rules)
        for path in sorted(OPS.rglob("*.py"))
        if _defined(path) & rules
    }
    assert found == {
        "views/limits.py": ["_limit_uses", "_recorded_uses", "measure_of"],
        "views/run_limits.py": ["batch_limit", "key_limit", "summed_limit"],
    }


@pytest.mark.parametrize(
    ("base", "announced", "learned", "limit"),
    [
        (500.0, None, None, 500.0),
        (500.0, 400.0, None, 400.0),
        (500.0, 400.0, 300.0, 300.0),
        (None, 400.0, None, 400.0),
        (None, None, None, None),
    ],
)
def test_a_keys_limit_is_the_lowest_it_knows(
    base: float | None, announced: float | None, learned: float | None, limit: float | None
) -> None:
    assert key_limit(base, announced, learned) == limit


def test_a_batchs_limit_is_none_when_one_key_has_none() -> None:
    assert summed_limit([100.0, 50.0]) == 150.0
    assert summed_limit([100.0, None]) is None
    assert summed_limit([]) is None


def test_an_endpoints_limit_across_its_models_caps_their_sum_per_endpoint() -> None:
    assert batch_limit({("a", "m"): 100.0, ("a", "n"): 100.0, ("a", ALL_MODELS): 150.0}) == 150.0
    assert batch_limit({("a", "m"): 100.0, ("a", ALL_MODELS): 150.0}) == 100.0
    # A model without a limit leaves the endpoint's; an endpoint without one, the models'.
    assert batch_limit({("a", "m"): None, ("a", ALL_MODELS): 150.0}) == 150.0
    assert batch_limit({("a", "m"): 100.0, ("a", ALL_MODELS): None}) == 100.0
    # A pool's members each cap their own, and the members' figures add up.
    two = {("a", "m"): 100.0, ("a", ALL_MODELS): 60.0, ("b", "m"): 100.0}
    assert batch_limit(two) == 160.0
    assert batch_limit({("a", "m"): None, ("b", "m"): 100.0}) is None
