"""Headless Chromium for the tests of web pages (the dashboard, the report): Debian's
``chromium`` package driven by Playwright, never a downloaded browser. Screenshots are kept
as test artifacts (``$BATCHRUN_TEST_ARTIFACTS``, else ``test-artifacts/`` in the repository).

Without Chromium or Playwright the tests that use :func:`browser` skip locally and fail under
``CI=true``, so a CI run cannot pass without looking at the pages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS_VARIABLE = "BATCHRUN_TEST_ARTIFACTS"
REPOSITORY = Path(__file__).parents[1]


def _missing(what: str) -> None:
    message = f"{what}; install it with `apt-get install chromium` and `pip install playwright`"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser tests must run under CI: {message}")
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed")
    if not CHROMIUM.exists():
        _missing(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots are kept."""
    folder = Path(os.environ.get(ARTIFACTS_VARIABLE) or REPOSITORY / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
