"""Keeping a prompt-cache group's entry warm while a provider batch holds its followers
(pure: when, and what to send; the driver sends, the store remembers).

A group's leader answers alone in real time and writes the entry (with ``--cache-ttl auto``,
for an hour); its followers then wait in a provider batch, which may run hours later. A read
refreshes an entry's lifetime, so before the entry expires the driver sends one small
real-time request per group: the leader's params with ``max_tokens`` 1 (the same prefix,
read, not written, when the entry is alive), paced by the run's limiter. A group is due
:data:`REFRESH_AT_SHARE` of its TTL after its entry was last written or read (the leader's
answer, or the last refresh), so a group gets at most one refresh per TTL period. Refreshing
stops when the provider batch ends (its followers are no longer held).

The TTL is the one of the group's breakpoint (the request's last ``cache_control``), times
the endpoint's ``batch_cache_ttl_scale``. Only groups with the 1-hour TTL (``--cache-ttl
auto``, or written so) are kept warm: a 5-minute entry would need a refresh every four
minutes for as long as the provider takes (up to 24 hours), which can cost more than the
followers' writes it saves.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from batchrun.records import CacheGroupWarmth

ONE_HOUR_S = 3600.0
# A group is refreshed once this share of its entry's lifetime has passed since it was last
# written or read: early enough for a refresh to arrive in time, late enough to be one per
# TTL period.
REFRESH_AT_SHARE = 0.8


def kept_warm_ttl_s(params_json: str, *, scale: float = 1.0) -> float | None:
    """The lifetime, in seconds, of the entry the request's last breakpoint writes when it
    is kept warm (its TTL is "1h"); None when it is not (no breakpoint, or "5m")."""
    try:
        params = json.loads(params_json)
    except ValueError:
        return None
    last: Any = None
    if isinstance(params, dict):
        for block in _blocks(params):
            if isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
                last = block["cache_control"]
    if last is None or last.get("ttl") != "1h":
        return None
    return ONE_HOUR_S * scale


def _blocks(params: dict[str, Any]) -> list[Any]:
    """The blocks that may carry a breakpoint, in the order the cache reads them."""
    blocks: list[Any] = []
    for key in ("tools", "system"):
        if isinstance(params.get(key), list):
            blocks.extend(params[key])
    messages = params.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and isinstance(message.get("content"), list):
                blocks.extend(message["content"])
    return blocks


def refresh_due_at(group: CacheGroupWarmth, ttl_s: float) -> datetime:
    """When ``group`` should be refreshed next."""
    return group.warm_since + timedelta(seconds=ttl_s * REFRESH_AT_SHARE)


def refresh_body(params_json: str) -> str:
    """The refresh request: the leader's params with ``max_tokens`` 1, not streamed."""
    params = json.loads(params_json)
    params["max_tokens"] = 1
    params.pop("stream", None)
    return json.dumps(params, ensure_ascii=False, separators=(",", ":"))
