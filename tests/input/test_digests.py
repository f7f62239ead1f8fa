"""The digests made at submit: the params digest (reuse) and the cache prefix key (groups,
routing)."""

from __future__ import annotations

import hashlib
import json

from batchrun.input.digests import cache_prefix_key, params_digest, prefix_key
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
