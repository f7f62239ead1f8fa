"""The dashboard in a real browser (``tests.browsing``: headless Debian Chromium under
Playwright) against a real `batchrun serve` while a batch runs; screenshots are kept as test
artifacts."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchrun.input.ingest import submit_requests
from batchrun.server.keys import key_id
from batchrun.simulator import SimulatorConfig, running_simulator
from tests.conftest import jsonl, request_line
from tests.server.serving import KEY_A, running_server, server_env

pytestmark = pytest.mark.browser

# A name that would run a script if a page used it as markup.
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
# Long enough for the pages to see the batch run: 2 requests a second at most.
RUNNING_REQUESTS = 120
RPM = 120
WAIT_MS = 30_000


def _gateway(url: str) -> str:
    return (
        f'[endpoints.sim]\nbase_url = "{url}"\nauth = "none"\n'
        f'[endpoints.sim.limits."*"]\nrpm = {RPM}\n'
    )


def test_the_pages_show_a_running_batch_its_progress_and_its_chart(
    browser: Any, artifacts: Path, sqlite_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "batchrun.toml"
    simulator = SimulatorConfig(latency_s=0.2, latency_jitter_s=0.2)
    with running_simulator(simulator) as sim_url:
        config.write_text(_gateway(sim_url))
        with running_server(sqlite_url, server_env(home), endpoint="sim", config=config) as (
            base,
            _server,
        ):
            lines = [request_line(f"r{i:03d}") for i in range(RUNNING_REQUESTS)]
            created = httpx.post(
                base + "/v1/messages/batches",
                json={"requests": lines},
                headers={"x-api-key": KEY_A},
            )
            batch_id = created.json()["id"]
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            try:
                page.goto(base + "/")
                page.fill("#key", KEY_A)
                page.click("button[type=submit]")

                row = f"tr[data-batch-id='{batch_id}']"
                page.wait_for_selector(row, timeout=WAIT_MS)
                # Some requests done and some not: the batch is seen running.
                page.wait_for_function(
                    """(row) => {
                        const bar = document.querySelector(row + " [role=progressbar]");
                        if (!bar) return false;
                        const done = Number(bar.getAttribute("aria-valuenow"));
                        const total = Number(bar.getAttribute("aria-valuemax"));
                        return total > 0 && done > 0 && done < total;
                    }""",
                    arg=row,
                    timeout=WAIT_MS,
                )
                bar = page.locator(f"{row} [role=progressbar]")
                assert int(bar.get_attribute("aria-valuemax") or 0) == RUNNING_REQUESTS
                assert 0 < int(bar.get_attribute("aria-valuenow") or 0) < RUNNING_REQUESTS
                assert page.locator(f"{row} .badge").inner_text().lower() in ("running", "waiting")
                assert page.locator(f"{row} .batch-link").inner_text() == batch_id
                list_shot = artifacts / "dashboard-list.png"
                page.screenshot(path=str(list_shot), full_page=True)

                page.click(f"{row} .batch-link")
                page.wait_for_url(f"**/batches/{batch_id}", timeout=WAIT_MS)
                series = "#chart-requests polyline[data-series=requests]"
                # A flat line has no height: Playwright calls it hidden, so wait for it attached.
                page.wait_for_selector(series, state="attached", timeout=WAIT_MS)
                for chart, key in (
                    ("chart-requests", "requests"),
                    ("chart-requests", "errored"),
                    ("chart-tokens", "input_tokens"),
                    ("chart-tokens", "output_tokens"),
                ):
                    line = page.locator(f"#{chart} polyline[data-series={key}]")
                    points = (line.get_attribute("points") or "").split()
                    assert len(points) >= 2, f"{chart} {key}: {points}"
                    assert int(line.get_attribute("data-count") or 0) >= 1
                # The configured limit is drawn, marked binding: it is the only one.
                limit = page.locator("#chart-requests g[data-limit=rpm]")
                assert "limit-binding" in (limit.get_attribute("class") or "")
                assert "rpm 120" in (limit.text_content() or "")
                assert page.locator("#limit-rows tr[data-dimension=rpm]").count() == 1
                assert page.locator("#cards [role=progressbar]").count() == 1
                batch_shot = artifacts / "dashboard-batch.png"
                page.screenshot(path=str(batch_shot), full_page=True)
            finally:
                page.close()
                httpx.post(
                    f"{base}/v1/messages/batches/{batch_id}/cancel", headers={"x-api-key": KEY_A}
                )
    assert problems == []
    print(f"screenshots: {list_shot} {batch_shot}")


def test_a_batch_name_with_markup_shows_as_text(
    browser: Any, artifacts: Path, sqlite_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with running_server(sqlite_url, server_env(home)) as (base, server):
        batch_id = submit_requests(
            server.store,
            io.BytesIO(jsonl([request_line("a")])),
            source="names.jsonl",
            endpoint="simulator",
            now=datetime.now(UTC),
            name=HOSTILE_NAME,
            owner=key_id(KEY_A),
        )
        page = browser.new_page(viewport={"width": 1360, "height": 700})
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        try:
            page.goto(base + "/")
            page.fill("#key", KEY_A)
            page.click("button[type=submit]")
            link = page.locator(f"tr[data-batch-id='{batch_id}'] .batch-link")
            link.wait_for(timeout=WAIT_MS)

            assert link.inner_text() == HOSTILE_NAME
            assert page.locator("img[src=x]").count() == 0
            page.screenshot(path=str(artifacts / "dashboard-hostile-name.png"))

            link.click()
            title = page.locator("#batch-title")
            page.wait_for_function(
                "(name) => document.getElementById('batch-title').textContent === name",
                arg=HOSTILE_NAME,
                timeout=WAIT_MS,
            )
            assert title.inner_text() == HOSTILE_NAME
            assert page.locator("img[src=x]").count() == 0
        finally:
            page.close()
    assert dialogs == []
