"""A create body, ``{"requests": [{"custom_id", "params"}, ...]}``, read as the request
lines ``submit`` validates, one element at a time.

The body is spooled first (memory, then a temporary file), so a 256 MB body never sits in
memory; the elements are then parsed one by one with ijson's C parser and each is handed on
as one JSON line, so ``submit``'s rules, wording and single transaction apply unchanged.
Element ``i`` is line ``i + 1``; :func:`request_position` names it ``requests[i]``.

Other top-level fields are ignored. A body that is not JSON, is cut short, has no
``requests`` array, or nests deeper than a request line may (``MAX_JSON_DEPTH``) raises
:class:`~batchrun.server.errors.ApiError` (400) as it is met, which rolls back what was
stored. The depth is checked while parsing, before a level is built: the parser keeps the
path of every open level, so a body of a million ``[`` would otherwise need terabytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any, BinaryIO

import ijson
import orjson

from batchrun.input.validation import MAX_JSON_DEPTH, deep_problem
from batchrun.server.errors import ApiError

# Anthropic's limits per batch.
MAX_BATCH_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1024 * 1024
# Levels above a request line in the body: the body's object and its requests array.
_BODY_LEVELS = 2
# ijson builds each open level's dotted path of keys (``requests.item.params.tools...``),
# copying its parent's: a long path (megabyte keys) over many small objects or arrays costs
# time quadratic in the body. At this bound a 256 MB body of ``[],`` parses in about twice
# the time of one without keys (measured: 0.31 s per million ``[]`` under a 1 KiB path,
# 0.7 s under 8 KiB, 2.1 s under 60 KiB). A Messages request's longest path, 128 levels of
# 30-character keys, is 4 KiB; real ones are a few hundred characters.
MAX_KEY_PATH_CHARS = 4096
# Bytes the parser is fed at a time: it makes all the events of a piece before the depth
# check sees the first, so a piece bounds the levels (and paths) built past the limit.
_PARSE_PIECE_BYTES = 4096
_OPENS = frozenset({"start_map", "start_array"})
_CLOSES = frozenset({"end_map", "end_array"})
# The create body's shape, for messages.
_SHAPE = '{"requests": [{"custom_id": "...", "params": {...}}, ...]}'


def request_position(line_no: int) -> str:
    """Where request line ``line_no`` was in the body."""
    return f"requests[{line_no - 1}]"


def request_lines(body: IO[bytes], *, max_requests: int = MAX_BATCH_REQUESTS) -> BinaryIO:
    """The ``requests`` elements of a spooled create body as a stream of JSON lines."""
    return io.BufferedReader(_RequestLines(body, max_requests), buffer_size=1 << 16)


class _RequestLines(io.RawIOBase):
    def __init__(self, body: IO[bytes], max_requests: int) -> None:
        self._body = body
        events = _depth_checked(ijson.parse(body, use_float=True, buf_size=_PARSE_PIECE_BYTES))
        self._items = ijson.items(events, "requests.item")
        self._max_requests = max_requests
        self._count = 0
        self._pending = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        while not self._pending and not self._done:
            self._pending = self._next_line()
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _next_line(self) -> bytes:
        try:
            item = next(self._items)
        except StopIteration:
            self._done = True
            if self._count == 0:
                raise ApiError(400, _why_no_requests(self._body)) from None
            return b""
        except ijson.JSONError as exc:
            raise ApiError(400, _not_json(exc, self._count)) from None
        except _TooDeep as exc:
            raise ApiError(400, _too_deep(exc.prefix, self._count)) from None
        except _KeysTooLong as exc:
            raise ApiError(400, _keys_too_long(exc.prefix, self._count)) from None
        self._count += 1
        if self._count > self._max_requests:
            raise ApiError(
                400,
                f"requests: more than {self._max_requests:,} requests, the most one batch "
                "may hold; split them into several batches",
            )
        return _encode(item) + b"\n"


class _TooDeep(Exception):
    def __init__(self, prefix: str) -> None:
        super().__init__(prefix[:200])
        self.prefix = prefix


class _KeysTooLong(Exception):
    def __init__(self, prefix: str) -> None:
        super().__init__(prefix[:200])
        self.prefix = prefix


def _depth_checked(
    events: Iterable[tuple[str, str, Any]],
) -> Iterator[tuple[str, str, Any]]:
    """``events`` as they come, raising _TooDeep at the first level past the limit and
    _KeysTooLong at the first object or array whose path of keys is too long."""
    limit = MAX_JSON_DEPTH + _BODY_LEVELS
    depth = 0
    for event in events:
        kind = event[1]
        if kind in _OPENS:
            depth += 1
            if depth > limit:
                raise _TooDeep(event[0])
            if len(event[0]) > MAX_KEY_PATH_CHARS:
                raise _KeysTooLong(event[0])
        elif kind in _CLOSES:
            depth -= 1
        yield event


def _too_deep(prefix: str, parsed: int) -> str:
    """The problem of a body nested past the limit at ``prefix`` (ijson's dotted path)."""
    parts = prefix.split(".")
    if parts[:2] != ["requests", "item"]:
        return (
            f"the body nests objects and arrays deeper than {MAX_JSON_DEPTH + _BODY_LEVELS} "
            f"levels; send {_SHAPE}"
        )
    # The keys up to the first array on the way, as validation says them.
    keys = parts[2:4]
    place = "".join(f".{part}" for part in keys[: keys.index("item") if "item" in keys else 2])
    return f"{request_position(parsed + 1)}: {deep_problem(place)}"


def _keys_too_long(prefix: str, parsed: int) -> str:
    where = request_position(parsed + 1) if prefix.startswith("requests.item.") else "the body"
    return (
        f"{where}: the keys on the way to an object or array are longer than "
        f"{MAX_KEY_PATH_CHARS:,} characters together; no Messages API request has such keys"
    )


def _encode(item: object) -> bytes:
    """One element as a JSON line. Integers past 64 bits (which orjson refuses) are written
    by the standard library, so validation can name them instead of failing here."""
    try:
        return orjson.dumps(item)
    except TypeError:
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()


def _not_json(exc: Exception, parsed: int) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "cut short"
    if "integer overflow" in detail:
        # The parser reads integers as 64-bit; the element it was reading holds a bigger one.
        return (
            f"requests[{parsed}]: holds an integer too large to read (more than 64 bits); "
            "no Messages API field takes one"
        )
    where = f" after requests[{parsed - 1}]" if parsed else ""
    return (
        f"the body is not valid JSON{where} ({detail}); send {_SHAPE} "
        "with content-type application/json"
    )


def _why_no_requests(body: IO[bytes]) -> str:
    """Why a body that parsed gave no request: read its top level again (cheap: this is
    only reached when there is nothing to store)."""
    body.seek(0)
    top: str | None = None
    requests_kind: str | None = None
    try:
        for prefix, event, value in ijson.parse(body):
            if top is None:
                top = event
                if event != "start_map":
                    break
            elif prefix == "" and event == "map_key" and value == "requests":
                requests_kind = "pending"
            elif requests_kind == "pending" and prefix == "requests":
                requests_kind = event
                break
    except ijson.JSONError as exc:
        return _not_json(exc, 0)
    if top is None:
        return f"the body is empty; send {_SHAPE}"
    if top != "start_map":
        return f"the body must be a JSON object, {_SHAPE}"
    if requests_kind is None:
        return f"requests: field required; send {_SHAPE}"
    if requests_kind == "start_array":
        return "requests: the list is empty; a batch needs at least one request"
    return "requests: must be a list of request objects, " + _SHAPE
