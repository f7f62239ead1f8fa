"""Deterministic behaviour requested from inside a prompt.

Any text in ``system`` or in the messages (string content, ``text`` blocks, text inside
``tool_result`` blocks) may carry ``[[sim:key=value:key=value...]]``. Several tokens merge,
later keys winning. Keys:

- ``status=N``: answer HTTP ``N`` with Anthropic's error body for it (200 means no fault);
- ``times=N``: apply the faults (status, hang, cut, malformed, not_message) only to the
  first ``N`` receptions of this exact request body; later ones succeed. Without it, every
  reception gets them;
- ``hang=1``: never answer (until the client goes away);
- ``cut=1``: send the headers and half the body, then drop the connection;
- ``malformed=1``: 200 with a body that is not JSON;
- ``not_message=1``: 200 with JSON that is not a Message (``{"ok":true}``);
- ``output_tokens=N``: reply length (still capped by ``max_tokens``);
- ``latency=S``: seconds before answering, replacing the configured latency;
- ``should_retry=B``: add ``x-should-retry: true|false`` to error answers;
- ``retry_after=S``: the ``retry-after`` of a ``status=429`` answer (default 1);
- ``spend_limit=1``: make a ``status=429`` the spend-cap kind: ``error.details.error_code =
  "enforced_spend_limit_reached"`` and no ``retry-after``;
- ``invalid_output=P``: a share ``P`` (0-1) of structured requests (``output_config.format``
  or a forced tool with an ``input_schema``), chosen by their body, get an answer that does
  not match the schema (see `batchrun.simulator.structured`);
- ``echo_key=1``: the error message of a ``status`` answer quotes the API key the request
  presented, as some gateways do ("invalid API key sk-..."); on a success, the key is the
  ``request-id`` header and the reply's text: to test that it is not kept.

Booleans accept ``1/0``, ``true/false`` and ``yes/no``. An unknown key or a bad value is
answered with a 400 that names it, so a typo in a test cannot pass silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

MARKER = b"[[sim:"
_DIRECTIVE_RE = re.compile(r"\[\[sim:([^\[\]]*)\]\]")
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


class DirectiveError(ValueError):
    """A ``[[sim:...]]`` token cannot be understood; the message says which part."""


@dataclass(frozen=True, slots=True)
class Directive:
    """What the ``[[sim:...]]`` tokens of one request ask for; see the module docstring."""

    status: int | None = None
    times: int | None = None
    hang: bool = False
    cut: bool = False
    malformed: bool = False
    not_message: bool = False
    output_tokens: int | None = None
    latency_s: float | None = None
    should_retry: bool | None = None
    retry_after_s: float | None = None
    spend_limit: bool = False
    echo_key: bool = False
    invalid_output: float = 0.0

    @property
    def has_fault(self) -> bool:
        """True when the directive changes the answer, not only its length or timing."""
        return (
            (self.status is not None and self.status != 200)
            or self.hang
            or self.cut
            or self.malformed
            or self.not_message
        )

    def faults_apply(self, reception: int) -> bool:
        """Whether the faults apply to the ``reception``-th (1-based) copy of the body."""
        return self.has_fault and (self.times is None or reception <= self.times)


NO_DIRECTIVE = Directive()


def strip_directives(text: str) -> str:
    """``text`` without its ``[[sim:...]]`` tokens."""
    return _DIRECTIVE_RE.sub("", text) if "[[sim:" in text else text


def parse_directives(params: Mapping[str, Any]) -> Directive:
    """The merged directive of a request body; raises :class:`DirectiveError`."""
    directive = NO_DIRECTIVE
    for text in _texts(params):
        for match in _DIRECTIVE_RE.finditer(text):
            for item in match.group(1).split(":"):
                if item:
                    directive = _apply(directive, item)
    return directive


def _texts(params: Mapping[str, Any]) -> Iterator[str]:
    yield from _content_texts(params.get("system"))
    messages = params.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping):
                yield from _content_texts(message.get("content"))


def _content_texts(content: object) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, Mapping):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                yield block["text"]
            elif block.get("type") == "tool_result":
                yield from _content_texts(block.get("content"))


def _apply(directive: Directive, item: str) -> Directive:
    key, sep, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not sep:
        raise DirectiveError(f"simulator directive item {item!r} must look like key=value")
    try:
        match key:
            case "status":
                status = int(value)
                if status != 200 and not 400 <= status <= 599:
                    raise ValueError
                return replace(directive, status=status)
            case "times":
                return replace(directive, times=_non_negative_int(value))
            case "hang" | "cut" | "malformed" | "not_message" | "spend_limit" | "echo_key":
                return replace(directive, **{key: _bool(value)})
            case "output_tokens":
                return replace(directive, output_tokens=_non_negative_int(value))
            case "latency":
                return replace(directive, latency_s=_seconds(value))
            case "should_retry":
                return replace(directive, should_retry=_bool(value))
            case "retry_after":
                return replace(directive, retry_after_s=_seconds(value))
            case "invalid_output":
                return replace(directive, invalid_output=_share(value))
    except ValueError:
        raise DirectiveError(f"simulator directive {key}={value!r} has an invalid value") from None
    raise DirectiveError(f"unknown simulator directive key {key!r} in [[sim:...]]")


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not (number >= 0 and math.isfinite(number)):
        raise ValueError
    return number


def _share(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError
    return number


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError
