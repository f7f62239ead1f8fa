"""Prompt caching, as Anthropic documents it, for the Messages route and for batches.

A breakpoint is a block carrying ``cache_control`` (``{"type": "ephemeral"}``, optionally
with ``"ttl": "5m" | "1h"``): a tool definition in ``tools``, a block of ``system`` (when it
is a list) or a block of a message's ``content``, taken in that order (tools → system →
messages), at most :data:`MAX_BREAKPOINTS` of them. The prefix of a breakpoint is everything
up to and including its block; its cache key is the SHA-256 of the model and the canonical
JSON of that prefix without the ``cache_control`` markers (so moving a marker does not change
what an earlier prefix is), and its size is :func:`~batchrun.simulator.tokens.count_input_tokens`
of the prefix as the request sent it.

A request reads the longest breakpoint prefix that is in the cache and alive
(``cache_read_input_tokens``, its lifetime refreshed) and writes every later breakpoint:
``cache_creation_input_tokens`` are the tokens from the read prefix (or the start) up to the
last breakpoint, split by the TTL of the breakpoint closing each stretch; ``input_tokens``
are the rest. Prefixes shorter than ``cache_min_tokens`` are neither read nor written.

A write becomes readable when the writing request's answer is sent, not when the request
arrives, so concurrent requests with the same prefix all miss. Every time is an event-loop
clock reading passed in by the caller; entries live :data:`CACHE_TTL_5M_S` or
:data:`CACHE_TTL_1H_S` (times the cache's ``ttl_scale``, so tests can make an hour short)
after their last write or read. An entry remembers from when it is readable, so that a batch
processed a little after the fact (see ``simulator.batches``) reads the cache as it was at
the time it stands for.

TTLs may be mixed along a prompt only with the longer first, as Anthropic requires: a
``"1h"`` breakpoint after a ``"5m"`` one is a 400.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchrun.simulator.tokens import compact_json, count_input_tokens

CACHE_TTL_5M_S = 300.0
CACHE_TTL_1H_S = 3600.0
_TTLS_S = {"5m": CACHE_TTL_5M_S, "1h": CACHE_TTL_1H_S}
ONE_HOUR = "1h"
MAX_BREAKPOINTS = 4
# Writes between two sweeps of long-dead entries.
_SWEEP_EVERY_WRITES = 4096


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """One ``cache_control`` marker of a request: the key and size of its prefix."""

    key: bytes
    tokens: int
    ttl: str  # "5m" or "1h"

    @property
    def one_hour(self) -> bool:
        """True for a ``"ttl": "1h"`` breakpoint."""
        return self.ttl == ONE_HOUR


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What one request reads from and writes to the cache, in tokens."""

    total_input_tokens: int
    read: Breakpoint | None = None
    writes: tuple[Breakpoint, ...] = ()
    creation_5m_tokens: int = 0
    creation_1h_tokens: int = 0

    @property
    def read_tokens(self) -> int:
        """``cache_read_input_tokens``."""
        return 0 if self.read is None else self.read.tokens

    @property
    def creation_tokens(self) -> int:
        """``cache_creation_input_tokens``."""
        return self.creation_5m_tokens + self.creation_1h_tokens

    @property
    def input_tokens(self) -> int:
        """``input_tokens``: the input neither read from nor written to the cache."""
        return self.total_input_tokens - self.read_tokens - self.creation_tokens

    def usage(self, output_tokens: int, service_tier: str) -> dict[str, Any]:
        """The Message's ``usage`` object."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": self.creation_tokens,
            "cache_read_input_tokens": self.read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.creation_5m_tokens,
                "ephemeral_1h_input_tokens": self.creation_1h_tokens,
            },
            "service_tier": service_tier,
        }


def read_breakpoints(params: Mapping[str, Any]) -> tuple[Breakpoint, ...] | str:
    """The breakpoints of a checked Messages body in prefix order, or what is wrong with
    one of its ``cache_control`` markers (a ``field: problem`` message)."""
    tools, system, messages = params.get("tools"), params.get("system"), params["messages"]
    # (field path, the prefix in request form, the same prefix without markers)
    found: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    if isinstance(tools, list):
        for index, tool in enumerate(tools):
            if _marked(tool):
                prefix = {"tools": tools[: index + 1]}
                found.append((f"tools.{index}", prefix, {"tools": _strip(tools[: index + 1])}))
    head: dict[str, Any] = {} if tools is None else {"tools": tools}
    if isinstance(system, list):
        for index, block in enumerate(system):
            if _marked(block):
                prefix = {**head, "system": system[: index + 1]}
                stripped = _strip_prefix(prefix)
                found.append((f"system.{index}", prefix, stripped))
    if system is not None:
        head = {**head, "system": system}
    for number, message in enumerate(messages):
        content = message["content"]
        if not isinstance(content, list):
            continue
        for index, block in enumerate(content):
            if _marked(block):
                partial = {**message, "content": content[: index + 1]}
                prefix = {**head, "messages": [*messages[:number], partial]}
                path = f"messages.{number}.content.{index}"
                found.append((path, prefix, _strip_prefix(prefix)))
    if len(found) > MAX_BREAKPOINTS:
        return (
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(found)}."
        )
    model: str = params["model"]
    points: list[Breakpoint] = []
    for path, prefix, stripped in found:
        ttl = _ttl(_closing_block(prefix), path)
        if ttl not in _TTLS_S:
            return ttl
        if ttl == ONE_HOUR and any(not point.one_hour for point in points):
            return (
                f"{path}.cache_control.ttl: a '1h' cache_control block may not come after a "
                "'5m' one; longer TTLs must come first (tools, then system, then messages)"
            )
        digest = hashlib.sha256(f"{model}\0{compact_json(stripped)}".encode())
        points.append(Breakpoint(digest.digest(), count_input_tokens(prefix), ttl))
    return tuple(points)


def _closing_block(prefix: Mapping[str, Any]) -> Mapping[str, Any]:
    # The block that closes ``prefix``: the one carrying the marker.
    if "messages" in prefix:
        block: Mapping[str, Any] = prefix["messages"][-1]["content"][-1]
        return block
    if "system" in prefix:
        block = prefix["system"][-1]
        return block
    block = prefix["tools"][-1]
    return block


def _marked(block: object) -> bool:
    return isinstance(block, Mapping) and "cache_control" in block


def _ttl(block: Mapping[str, Any], path: str) -> str:
    """The block's TTL ("5m" or "1h"), or what is wrong with its marker."""
    control = block["cache_control"]
    if not isinstance(control, Mapping):
        return f"{path}.cache_control: Input should be a valid dictionary"
    if control.get("type") != "ephemeral":
        return f"{path}.cache_control.type: Input should be 'ephemeral'"
    ttl = control.get("ttl", "5m")
    if ttl not in _TTLS_S:
        return f"{path}.cache_control.ttl: Input should be '5m' or '1h'"
    return str(ttl)


def _strip(blocks: list[Any]) -> list[Any]:
    return [
        {k: v for k, v in block.items() if k != "cache_control"}
        if isinstance(block, Mapping)
        else block
        for block in blocks
    ]


def _strip_prefix(prefix: Mapping[str, Any]) -> dict[str, Any]:
    stripped: dict[str, Any] = {}
    if "tools" in prefix:
        stripped["tools"] = _strip(prefix["tools"])
    system = prefix.get("system")
    if system is not None:
        stripped["system"] = _strip(system) if isinstance(system, list) else system
    if "messages" in prefix:
        stripped["messages"] = [
            {**message, "content": _strip(message["content"])}
            if isinstance(message["content"], list)
            else message
            for message in prefix["messages"]
        ]
    return stripped


class _Entry:
    """A cached prefix: readable from ``readable_from`` until ``expires_at``."""

    __slots__ = ("expires_at", "readable_from")

    def __init__(self, readable_from: float, expires_at: float) -> None:
        self.readable_from = readable_from
        self.expires_at = expires_at


class PromptCache:
    """The cached prefixes of every model.

    ``history_s`` is how far back in time a caller may still look up (the simulator's
    batch processing time): entries dead for longer than that are dropped now and then.
    ``ttl_scale`` multiplies both lifetimes (1: Anthropic's 5 minutes and 1 hour).
    """

    def __init__(self, *, min_tokens: int, history_s: float = 0.0, ttl_scale: float = 1.0) -> None:
        self._min_tokens = min_tokens
        self._history_s = history_s + 1.0
        self._lifetimes_s = {ttl: seconds * ttl_scale for ttl, seconds in _TTLS_S.items()}
        self._entries: dict[bytes, _Entry] = {}
        self._writes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lifetime_s(self, point: Breakpoint) -> float:
        """How long an entry of ``point`` lives after its last write or read, in seconds."""
        return self._lifetimes_s[point.ttl]

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._writes = 0

    def readable(self, key: bytes, at: float) -> bool:
        """Whether the prefix ``key`` could be read at loop time ``at``."""
        entry = self._entries.get(key)
        return entry is not None and entry.readable_from <= at < entry.expires_at

    def plan(self, points: tuple[Breakpoint, ...], total_input_tokens: int, at: float) -> CachePlan:
        """What a request with these breakpoints reads and writes at loop time ``at``
        (nothing changes until :meth:`touch` and :meth:`write`)."""
        eligible = [point for point in points if point.tokens >= self._min_tokens]
        if not eligible:
            return CachePlan(total_input_tokens)
        start = 0
        read: Breakpoint | None = None
        for index in range(len(eligible) - 1, -1, -1):
            if self.readable(eligible[index].key, at):
                read, start = eligible[index], index + 1
                break
        writes = tuple(eligible[start:])
        done = 0 if read is None else read.tokens
        creation_5m = creation_1h = 0
        for point in writes:
            stretch = max(0, point.tokens - done)
            done = max(done, point.tokens)
            if point.one_hour:
                creation_1h += stretch
            else:
                creation_5m += stretch
        return CachePlan(total_input_tokens, read, writes, creation_5m, creation_1h)

    def touch(self, plan: CachePlan, at: float) -> None:
        """Refresh the lifetime of what ``plan`` reads, as of loop time ``at``."""
        if plan.read is not None:
            entry = self._entries.get(plan.read.key)
            if entry is not None:
                entry.expires_at = max(entry.expires_at, at + self.lifetime_s(plan.read))

    def write(self, plan: CachePlan, at: float) -> None:
        """Store what ``plan`` writes, readable from loop time ``at`` (the answer's)."""
        for point in plan.writes:
            expires_at = at + self.lifetime_s(point)
            entry = self._entries.get(point.key)
            if entry is None or entry.expires_at <= at:
                self._entries[point.key] = _Entry(at, expires_at)
            else:
                # Alive, or written by a request answered later but recorded earlier.
                entry.readable_from = min(entry.readable_from, at)
                entry.expires_at = max(entry.expires_at, expires_at)
        self._writes += 1
        if self._writes % _SWEEP_EVERY_WRITES == 0:
            horizon = at - self._history_s
            dead = [key for key, entry in self._entries.items() if entry.expires_at < horizon]
            for key in dead:
                del self._entries[key]
