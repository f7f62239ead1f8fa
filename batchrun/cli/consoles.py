"""The two consoles: human messages go to stderr; stdout carries only what a script asks for
(ids, JSON, results).

Neither reads rich markup: what they print holds batch names, custom_ids, error messages and
config hints (``[prices."MODEL"]``) that users and servers wrote, and a ``[/bold]`` among
them must print as it is, not raise or vanish. Styles come from ``Text`` and column styles.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console

stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
stdout = Console(highlight=False, soft_wrap=True, markup=False)


def print_json(value: object, *, indent: int | None = 2) -> None:
    """``value`` as JSON on stdout (UTF-8, not escaped), one object."""
    sys.stdout.write(json.dumps(value, indent=indent, ensure_ascii=False) + "\n")
    sys.stdout.flush()
