"""Which limits entry of an endpoint a model falls under: its own, its family's, or "*".

An endpoint's limits are keyed by a model name (``"claude-sonnet-4-5"``), by a family
pattern (``"claude-sonnet-4*"``: ``*`` stands for any characters and is the only wildcard),
or by ``"*"``. For a model:

1. an entry named exactly after it wins;
2. else the longest pattern that matches it (of two as long, the first in alphabetical order);
3. else ``"*"``.

A pattern other than ``"*"`` is one limit shared by every model it matches (one set of
buckets, as Anthropic pools all Sonnet 4.x models); ``"*"`` gives each model that has no other
entry a limit of its own.

An endpoint's limits across all its models (``[endpoints.NAME.endpoint_limits]``) are kept
under the reserved entry :data:`ALL_MODELS`, which no limits table may name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

ANY_MODEL = "*"
# The limiter key of an endpoint's limits across all its models; no model or pattern is it.
ALL_MODELS = "(all models)"
WILDCARD = "*"
# fnmatch's other wildcards: refused, so that a model name never means more than it says.
_OTHER_WILDCARDS = "?[]"


def is_family(entry: str) -> bool:
    """Whether a limits entry is a family pattern: shared by the models it matches."""
    return WILDCARD in entry and entry != ANY_MODEL


def entry_problem(entry: str) -> str | None:
    """What is wrong with a limits entry's name, or None."""
    if not entry.strip():
        return 'name a model, a family pattern such as "claude-sonnet-4*", or "*"'
    if entry == ALL_MODELS:
        return (
            f'"{ALL_MODELS}" is reserved; limits across all models of an endpoint go in '
            "[endpoints.NAME.endpoint_limits]"
        )
    if any(char in entry for char in _OTHER_WILDCARDS):
        return (
            "only * is a wildcard (it stands for any characters), as in "
            '"claude-sonnet-4*"; ?, [ and ] are not allowed'
        )
    if is_family(entry) and not entry.strip(WILDCARD):
        return 'a pattern needs more than *; write "*" for a limit of each model'
    return None


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split(WILDCARD)), re.DOTALL)


def matches(pattern: str, model: str) -> bool:
    """Whether ``model`` is one of the models ``pattern`` stands for."""
    return _compiled(pattern).fullmatch(model) is not None


def entry_for(model: str, entries: Iterable[str]) -> str | None:
    """The entry among ``entries`` whose limits apply to ``model`` (see the module), or None."""
    names = set(entries)
    if model in names:
        return model
    families = [entry for entry in names if is_family(entry) and matches(entry, model)]
    if families:
        return min(families, key=lambda entry: (-len(entry), entry))
    return ANY_MODEL if ANY_MODEL in names else None
