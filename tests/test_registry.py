"""Each extension point is one registry: registering a new rate-limit dimension, auth style or
export format in one place is all it takes for every part of batchrun to use it."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import pytest
from typer.testing import CliRunner

from batchrun.cli.app import build_app
from batchrun.client import Client
from batchrun.config.file import endpoints_of, load_settings
from batchrun.config.prices import PriceTable
from batchrun.errors import ConfigError
from batchrun.export.formats import EXPORT_FORMATS, ExportFormat
from batchrun.limits.dimensions import DIMENSIONS, Amounts, Dimension, RateLimits
from batchrun.limits.limiter import Demand, Limiter, LimiterSettings
from batchrun.ops.monitor import RunMonitor
from batchrun.ops.planning import ModelPlan
from batchrun.records import ClaimedRequest, ResultDetail, Succeeded, Usage
from batchrun.transport.auth import (
    AUTH_STYLES,
    AuthStyle,
    redact,
    request_headers,
    secret_header_names,
)
from batchrun.transport.endpoints import auth_headers
from batchrun.transport.http import check_header_values
from batchrun.transport.ratelimit_headers import dimensions_named, parse_server_limits
from tests.conftest import jsonl, request_line

# A gateway that weighs output four times input, and says so in its headers and 429s.
WEIGHTED = Dimension(
    "wtpm",
    "weighted tokens (input + 4 × output)",
    lambda a: a.input_tokens + 4 * a.output_tokens,
    header_stem="weighted-tokens",
    message_pattern=re.compile(r"weighted units per minute", re.IGNORECASE),
)
# Azure-style: the key in an `api-key` header.
API_KEY_HEADER = AuthStyle("api-key", secret_headers=("api-key",), headers=lambda k: {"api-key": k})


@pytest.fixture
def weighted() -> Iterable[Dimension]:
    with DIMENSIONS.registered(WEIGHTED) as dimension:
        yield dimension


@pytest.fixture
def api_key_style() -> Iterable[AuthStyle]:
    with AUTH_STYLES.registered(API_KEY_HEADER) as style:
        yield style


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- a new rate-limit dimension ---------------------------------------------------------------


def test_a_new_dimension_is_a_limit_a_header_a_429_and_a_config_key(
    weighted: Dimension, tmp_path: Path
) -> None:
    assert RateLimits(wtpm=600).as_json()["wtpm"] == 600
    announced = parse_server_limits(
        {
            "anthropic-ratelimit-weighted-tokens-limit": "600",
            "anthropic-ratelimit-weighted-tokens-remaining": "0",
        }
    )
    assert announced is not None
    assert (announced.limits, announced.exhausted()) == ({"wtpm": 600}, {"wtpm"})
    assert dimensions_named("limit of 600 weighted units per minute exceeded") == {"wtpm"}

    config = write(
        tmp_path / "batchrun.toml",
        '[endpoints.gw]\nbase_url = "https://g.example"\nauth = "none"\n'
        '[endpoints.gw.limits."*"]\nwtpm = 600\n',
    )
    known = endpoints_of(load_settings(config), {})
    assert known.get("gw").limits_for("any-model") == RateLimits(wtpm=600)


def test_without_the_registration_the_same_key_is_refused(tmp_path: Path) -> None:
    config = write(
        tmp_path / "batchrun.toml",
        '[endpoints.gw]\nbase_url = "https://g.example"\nauth = "none"\n'
        '[endpoints.gw.limits."*"]\nwtpm = 600\n',
    )

    with pytest.raises(ConfigError, match=r'limits\."\*"\.wtpm: unknown key; did you mean "tpm"'):
        load_settings(config)
    with pytest.raises(ValueError, match="unknown rate limit 'wtpm'"):
        RateLimits(wtpm=1)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_limiter_paces_a_new_dimension_by_its_measure(weighted: Dimension) -> None:
    # 6,000 weighted tokens a minute; each request weighs 10 + 4 × 15 = 70 (no start-up ramp).
    limiter = Limiter({("gw", "m"): RateLimits(wtpm=6000)}, settings=LimiterSettings(ramp_s=0))
    loop = asyncio.get_running_loop()
    start, granted = loop.time(), 0
    while loop.time() - start < 60:
        permit = await limiter.acquire(("gw", "m"), Demand(10, 15))
        assert permit.reserved == {"wtpm": pytest.approx(70, rel=0.2)}
        limiter.settle(permit, Succeeded("{}", "m", "end_turn", Usage(10, 15), None))
        granted += 1

    # 6,000 / 70 ≈ 86 a minute, plus the one-second burst.
    assert 80 <= granted <= 90


def test_monitor_and_estimate_report_a_new_dimension(weighted: Dimension) -> None:
    plan = ModelPlan("m", requests=10, input_tokens=1000, max_output_tokens=500)
    plan.limits = RateLimits(wtpm=3000)
    # (1000 + 4 × 500) / 3000 per minute = 1 minute.
    assert plan.minutes_by_limit(500) == {"wtpm": pytest.approx(1.0)}

    async def watch() -> tuple[str, ...]:
        monitor = RunMonitor(prices=PriceTable(), counts={}, guard=None)
        request = ClaimedRequest(1, "b", "c", "m", 100, "{}", 1, 0)
        limiter = Limiter({("gw", "m"): RateLimits(wtpm=3000)})
        permit = await limiter.acquire(("gw", "m"), Demand(10, 100))
        monitor.admit(request, permit)
        monitor.settled(request, permit, Succeeded("{}", "m", "end_turn", Usage(10, 5), None))
        (key,) = monitor.snapshot().keys
        return tuple(use.dimension for use in key.uses)

    assert "wtpm" in asyncio.run(watch())
    assert Amounts(1, 10, 5) + Amounts(1, 10, 5) == Amounts(2, 20, 10)


def test_the_cli_gets_a_flag_for_a_new_dimension(weighted: Dimension, tmp_path: Path) -> None:
    requests = write(tmp_path / "r.jsonl", jsonl([request_line("a", max_tokens=100)]).decode())
    cli = CliRunner()
    app = build_app()

    helped = cli.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    estimated = cli.invoke(
        app,
        [
            "--db",
            f"sqlite:///{tmp_path / 'x.db'}",
            "estimate",
            str(requests),
            "--wtpm",
            "100",
            "--endpoint",
            "simulator",
            "--json",
        ],
        env={"HOME": str(tmp_path)},
    )

    assert "--wtpm" in helped.stdout
    assert "--endpoint-wtpm" in helped.stdout
    assert estimated.exit_code == 0, estimated.output
    (model,) = json.loads(estimated.stdout)["models"]
    assert set(model["worst_duration"]["minutes_by_limit"]) == {"wtpm"}


# -- a new auth style -------------------------------------------------------------------------


def test_a_new_auth_style_builds_its_headers_and_keeps_its_key_secret(
    api_key_style: AuthStyle, tmp_path: Path
) -> None:
    config = write(
        tmp_path / "batchrun.toml",
        '[endpoints.azure]\nbase_url = "https://a.example"\nauth = "api-key"\n'
        'api_key_env = "AZURE_KEY"\n',
    )
    endpoint = endpoints_of(load_settings(config), {}).get("azure")

    headers = auth_headers(endpoint, {"AZURE_KEY": "azure-secret-123"})

    assert headers.headers["api-key"] == "azure-secret-123"
    assert "api-key" in secret_header_names()
    assert redact("echoed azure-secret-123 back", headers.secrets) == "echoed [redacted] back"
    with pytest.raises(ConfigError, match="check AZURE_KEY: copy the key again"):
        check_header_values({"api-key": "bad\nkey"}, endpoint="azure", key_hint="AZURE_KEY")
    literal = write(
        tmp_path / "literal.toml",
        '[endpoints.azure]\nbase_url = "https://a.example"\nauth = "none"\n'
        'headers = { "api-key" = "azure-secret-123" }\n',
    )
    with pytest.raises(ConfigError, match="credentials do not belong in the config file"):
        load_settings(literal)


def test_an_unregistered_auth_style_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    config = write(
        tmp_path / "batchrun.toml",
        '[endpoints.azure]\nbase_url = "https://a.example"\nauth = "api-key"\n',
    )

    with pytest.raises(ConfigError, match='must be "bearer", "x-api-key" or "none", not "api-key"'):
        load_settings(config)
    assert request_headers(style="none", key=None, fixed={}, from_env={}).secrets == ()


# -- a new export format ----------------------------------------------------------------------


def _ids(rows: Iterable[ResultDetail], stream: IO[Any], _prices: PriceTable) -> int:
    count = 0
    for row in rows:
        stream.write(f"{row.custom_id}\t{row.state}\n")
        count += 1
    return count


IDS = ExportFormat("ids", "custom_id and state, tab-separated", _ids, uses_prices=False)


def test_a_new_export_format_is_written_by_the_api_and_the_cli(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    with Client(db, env={"HOME": str(tmp_path)}, cwd=tmp_path) as client:
        batch = client.submit([request_line("a"), request_line("b")], endpoint="simulator")
        client.run(batch.id, stop_on_signals=False)
        with EXPORT_FORMATS.registered(IDS):
            stream = io.StringIO()
            count = client.export(batch.id, stream, format="ids")
            cli = CliRunner().invoke(
                build_app(),
                ["--db", db, "results", batch.id, "--format", "ids"],
                env={"HOME": str(tmp_path)},
            )

    assert count == 2
    assert stream.getvalue() == "a\tsucceeded\nb\tsucceeded\n"
    assert cli.exit_code == 0, cli.output
    assert cli.stdout == "a\tsucceeded\nb\tsucceeded\n"
    with pytest.raises(ConfigError, match="unknown export format 'ids'; formats: anthropic"):
        EXPORT_FORMATS.get("ids")
