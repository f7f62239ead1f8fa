"""The ``batchrun`` command line: a thin shell over the public API (:mod:`batchrun.client`).

Holds: the app and the one place errors become exit codes (``app``), the global options and
the client made from them (``context``), options several commands share (``options``), one
module per noun (``batches``, ``run``, ``estimate``, ``lanes``, ``report``, ``serve``,
``tools``), what a person may type for a batch and the shell completion of batches, endpoints
and choices (``batch_ids``), and the views they print (``views``, ``progress``, ``estimate``,
``endpoint_views``, ``text``, ``consoles``).
May import: every other layer. The only package that imports typer and rich, and with the
public API the only reader of environment variables. Heavy modules (the store, httpx,
pydantic models) are imported inside commands, so ``--help`` starts fast.
"""

from __future__ import annotations


def main() -> None:
    """Console entry point (``batchrun``)."""
    from batchrun.cli.app import main as run

    run()
