"""The invocation's context: the global options, and the public API client made from them.
Commands get their client with :func:`client_of`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from batchrun.client import Client


@dataclass
class Options:
    """The global options, as the main callback received them."""

    db: str | None = None
    config: Path | None = None
    _client: Client | None = None

    def client(self) -> Client:
        """The API client for this invocation; the CLI is the one other reader of the
        environment, so it hands it over."""
        if self._client is None:
            from batchrun.client import Client

            self._client = Client(self.db, config=self.config, env=os.environ)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def client_of(ctx: typer.Context) -> Client:
    """The client of the invocation ``ctx`` belongs to."""
    options = ctx.find_root().obj
    assert isinstance(options, Options)
    return options.client()
