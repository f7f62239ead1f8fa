"""GET /metrics on a running server: a key is needed, the counters move while a batch runs
and agree with the batch object at the end, and the in-process workers' 429s are counted."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from batchrun.simulator import SimulatorConfig, running_simulator
from tests.conftest import request_line
from tests.server.serving import KEY_A, running_server, server_env

# How often the test looks at the batch and the page (not a wait for anything to happen).
POLL_S = 0.05


def scrape(http: httpx.Client) -> dict[str, float]:
    """Every sample summed by metric name and chosen labels: ``name{state=...}`` keys."""
    response = http.get("/metrics", headers={"authorization": f"Bearer {KEY_A}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = sample.name
            if "state" in sample.labels:
                key += "{" + sample.labels["state"] + "}"
            elif "kind" in sample.labels:
                key += "{" + sample.labels["kind"] + "}"
            found[key] = found.get(key, 0.0) + sample.value
    return found


def test_metrics_need_a_key_move_during_a_run_and_agree_at_the_end(
    db_url: str, tmp_path: Path
) -> None:
    with running_simulator(SimulatorConfig(latency_s=0.05)) as sim_url:
        config = tmp_path / "batchrun.toml"
        config.write_text(
            f'[endpoints.sim]\nbase_url = "{sim_url}"\nauth = "none"\n'
            '[endpoints.sim.limits."*"]\nrpm = 2400\n'
        )
        env = server_env(tmp_path)
        with (
            running_server(db_url, env, endpoint="sim", config=config) as (url, _server),
            httpx.Client(base_url=url, timeout=30) as http,
        ):
            assert http.get("/metrics").status_code == 401
            body = {"requests": [request_line(f"r{i}", f"q {i}") for i in range(80)]}
            created = http.post("/v1/messages/batches", json=body, headers={"x-api-key": KEY_A})
            batch_id = created.json()["id"]
            seen_sends: list[float] = []
            deadline = time.monotonic() + 120
            # Until the batch has ended and a page gathered since says so (a page is gathered
            # at most once a second; scrapes meanwhile get the last one).
            while True:
                batch = http.get(
                    f"/v1/messages/batches/{batch_id}", headers={"x-api-key": KEY_A}
                ).json()
                final = scrape(http)
                seen_sends.append(final.get("batchrun_sends_total", 0.0))
                if (
                    batch["processing_status"] == "ended"
                    and final.get("batchrun_requests{succeeded}") == 80
                ):
                    break
                assert time.monotonic() < deadline
                time.sleep(POLL_S)

    assert seen_sends == sorted(seen_sends) and len(set(seen_sends)) >= 2
    assert final["batchrun_requests{succeeded}"] == batch["request_counts"]["succeeded"] == 80
    assert final["batchrun_sends_total"] >= 80
    assert final["batchrun_tokens_total{input}"] == batch["usage"]["input_tokens"]
    assert final["batchrun_tokens_total{output}"] == batch["usage"]["output_tokens"]
    assert final["batchrun_requests_in_flight"] == 0
    assert "batchrun_rate_limited_total" in final
    assert final["batchrun_cost_usd_total"] > 0
