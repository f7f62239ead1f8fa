"""The digests made at submit: the params digest (reuse) and the cache prefix key (groups,
routing)."""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct

import pytest

from batchrun.input.digests import (
    cache_prefix_key,
    canonical_json,
    canonical_json_bytes,
    params_digest,
    prefix_key,
)
from tests.conftest import request_line


def test_the_params_digest_is_sha256_of_canonical_json() -> None:
    params = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [], "metadata": "é"}

    expected = hashlib.sha256(
        json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()

    assert params_digest(params) == expected


def test_key_order_does_not_change_the_params_digest_but_the_model_does() -> None:
    params = request_line("a", "question")["params"]
    reordered = dict(reversed(list(params.items())))
    nested = {**params, "messages": [{"content": "question", "role": "user"}]}

    assert params_digest(reordered) == params_digest(params) == params_digest(nested)
    assert params_digest({**params, "model": "claude-opus-4-1"}) != params_digest(params)
    assert params_digest({**params, "max_tokens": 257}) != params_digest(params)


def test_the_cache_prefix_key_covers_everything_up_to_the_last_breakpoint() -> None:
    system = [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}]

    def key(custom_id: str, text: str, **params: object) -> str | None:
        return cache_prefix_key(json.dumps(request_line(custom_id, text, **params)["params"]))

    first = key("a", "question one", system=system)
    assert first is not None
    assert first == key("b", "question two", system=system)
    assert first != key("c", "question one", system=system, model="claude-opus-4-1")
    assert first != key("d", "question one", system=[{**system[0], "text": "other rules"}])
    assert key("e", "question one") is None
    assert key("f", "question one", system="rules") is None


def test_the_prefix_key_of_parsed_params_is_that_of_their_json() -> None:
    tools = [{"name": "t", "input_schema": {}, "cache_control": {"type": "ephemeral"}}]
    params = request_line("a", "question", tools=tools)["params"]
    text = json.dumps(params)

    assert cache_prefix_key(text, params) == cache_prefix_key(text) == prefix_key(params)
    assert prefix_key(params) is not None


@pytest.mark.parametrize(
    "value",
    [
        0.1,
        1.0,
        -0.0,
        1e-4,
        1e-5,
        2.53e-9,
        1.5e16,
        1e22,
        5e-324,
        1.7976931348623157e308,
        12345678901234567.0,
        2**63,
        2**64 + 1,
        'naïve 😀 \u2028 \x00 \x1f \x7f "quoted" \\ 2e5 0.00001',
        {"é": 1, "😀": 2, "\uffff": 3, "b": [0.7, {"z": None, "a": True}]},
    ],
)
def test_the_fast_canonical_bytes_are_those_of_the_json_module(value: object) -> None:
    # Digests stored by earlier versions (json's text) must still match for reuse.
    expected = json.dumps(
        {"v": value}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()

    assert canonical_json_bytes({"v": value}) == expected


def test_random_floats_have_the_json_modules_text() -> None:
    generator = random.Random(27)
    values = [generator.uniform(-1, 1) * 10.0 ** generator.randint(-30, 30) for _ in range(20_000)]
    values += [struct.unpack("d", generator.randbytes(8))[0] for _ in range(20_000)]
    values = [v for v in values if math.isfinite(v)]

    for value in values:
        assert canonical_json_bytes([value]) == canonical_json([value]).encode(), value
