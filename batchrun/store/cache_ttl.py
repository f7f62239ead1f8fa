"""The one-hour cache TTL for prompt-cache groups whose followers go to the batch lane
(``--cache-ttl auto``): the rewrite of a request's ``cache_control`` markers.

A provider batch runs minutes to hours after its creation, and a ``"5m"`` entry written by
the group's leader (in real time) has expired by then: every follower writes the prefix
again (the cold batch, see "Paying less" in the docs). With ``"ttl": "1h"`` on the group's
breakpoint, in the leader's request and in the followers', the entry outlives the wait.

Anthropic requires a longer TTL to come before a shorter one along a prompt (tools, then
system, then messages): a ``"1h"`` breakpoint may not follow a ``"5m"`` one. The group's
breakpoint is the request's last one, so every breakpoint before it gets ``"1h"`` too: all
of a request's ``ephemeral`` markers are rewritten, nothing else changes.

Pure functions; no I/O.
"""

from __future__ import annotations

import json
from typing import Any

ONE_HOUR_TTL = "1h"
_CACHE_CONTROL = "cache_control"


def with_one_hour_ttl(params_json: str) -> str:
    """``params_json`` with ``"ttl": "1h"`` on every ``ephemeral`` ``cache_control`` marker
    (see the module docstring); the same text when it has none to change."""
    if _CACHE_CONTROL not in params_json:
        return params_json
    try:
        params = json.loads(params_json)
    except ValueError:
        return params_json
    if not isinstance(params, dict) or not _mark_params(params):
        return params_json
    return json.dumps(params, ensure_ascii=False, separators=(",", ":"))


def _mark_params(params: dict[str, Any]) -> bool:
    """Set the TTL of every marker of ``params`` in place; whether any changed."""
    changed = False
    for key in ("tools", "system"):
        blocks = params.get(key)
        if isinstance(blocks, list):
            changed |= _mark_blocks(blocks)
    messages = params.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and isinstance(message.get("content"), list):
                changed |= _mark_blocks(message["content"])
    return changed


def _mark_blocks(blocks: list[Any]) -> bool:
    changed = False
    for block in blocks:
        if not isinstance(block, dict):
            continue
        control = block.get(_CACHE_CONTROL)
        if (
            isinstance(control, dict)
            and control.get("type") == "ephemeral"
            and control.get("ttl") != ONE_HOUR_TTL
        ):
            block[_CACHE_CONTROL] = {**control, "ttl": ONE_HOUR_TTL}
            changed = True
    return changed
