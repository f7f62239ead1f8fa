"""Shared fixtures: a real SQLite file per test, the simulator, and request-file builders."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from batchrun.ingest import submit_requests
from batchrun.store.store import Store


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'batchrun.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store.open(db_url)
    yield opened
    opened.close()


def request_line(
    custom_id: str,
    text: str = "Hello",
    *,
    model: str = "claude-sonnet-4-5",
    max_tokens: int = 256,
    **params: Any,
) -> dict[str, Any]:
    """One request in Anthropic's batch format."""
    return {
        "custom_id": custom_id,
        "params": {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}],
            **params,
        },
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def submit(store: Store, lines: list[dict[str, Any]], *, endpoint: str = "simulator") -> str:
    """Store ``lines`` as a batch the way `batchrun submit` does; returns its id."""
    return submit_requests(
        store,
        io.BytesIO(jsonl(lines)),
        source="test.jsonl",
        endpoint=endpoint,
        now=datetime.now(UTC),
    )
