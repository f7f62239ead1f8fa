"""The two consoles: human messages go to stderr; stdout carries only what a script asks for
(ids, JSON, results)."""

from __future__ import annotations

import json
import sys

from rich.console import Console

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


def print_json(value: object, *, indent: int | None = 2) -> None:
    """``value`` as JSON on stdout (UTF-8, not escaped), one object."""
    sys.stdout.write(json.dumps(value, indent=indent, ensure_ascii=False) + "\n")
    sys.stdout.flush()
