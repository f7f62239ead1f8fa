"""``estimate`` with limits across all the models of an endpoint: the whole file is paced by
them as one, next to each model's own limits, and the longer of the two sets the duration."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from batchrun.cli.app import app
from tests.conftest import cli_env, jsonl, request_line

MODELS = ("claude-3-haiku-20240307", "claude-sonnet-4-5", "claude-opus-4-1")


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def invoke(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(app, list(args))


def three_models(tmp_path: Path, per_model: int = 100) -> Path:
    """``per_model`` requests of each of three models, 100 output tokens at most each."""
    path = tmp_path / "requests.jsonl"
    lines = [
        request_line(f"{model}-{i}", "hi", model=model, max_tokens=100)
        for model in MODELS
        for i in range(per_model)
    ]
    path.write_bytes(jsonl(lines))
    return path


def estimate_json(cli: CliRunner, *args: str) -> dict[str, object]:
    result = invoke(cli, *args, "--json")
    assert result.exit_code == 0, result.output
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_an_endpoint_wide_flag_makes_the_whole_file_take_longer_than_any_model(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = three_models(tmp_path)

    plan = estimate_json(
        cli, "estimate", str(path), "--endpoint", "simulator", "--rpm", "600",
        "--endpoint-rpm", "600",
    )  # fmt: skip

    # Each model alone: 100 requests at 600/min = 0.1667 min; all 300 share 600/min: 0.5 min.
    for model in plan["models"]:  # type: ignore[attr-defined]
        assert model["expected_duration"]["minutes"] == pytest.approx(100 / 600, abs=1e-3)
    assert plan["endpoint_limits"] == {"rpm": 600, "tpm": None, "itpm": None, "otpm": None}
    whole = plan["endpoint_duration"]["expected"]  # type: ignore[index]
    assert (whole["minutes"], whole["binding_limit"]) == (0.5, "rpm")
    assert plan["duration"]["expected"] == {"minutes": 0.5, "slowest_model": "(all models)"}  # type: ignore[index]


def test_the_slowest_model_still_sets_the_pace_when_the_endpoint_limit_is_looser(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = three_models(tmp_path)

    plan = estimate_json(
        cli, "estimate", str(path), "--endpoint", "simulator", "--rpm", "100",
        "--endpoint-rpm", "6000",
    )  # fmt: skip

    expected = plan["duration"]["expected"]  # type: ignore[index]
    assert expected["minutes"] == pytest.approx(1.0)
    assert expected["slowest_model"] in MODELS


def test_endpoint_limits_from_the_config_file_give_a_duration_where_models_have_none(
    cli: CliRunner, tmp_path: Path
) -> None:
    config = tmp_path / "batchrun.toml"
    config.write_text(
        textwrap.dedent(
            """
            [endpoints.gateway]
            base_url = "https://gateway.example"
            api_key_env = "GATEWAY_KEY"

            [endpoints.gateway.endpoint_limits]
            rpm = 150
            """
        )
    )
    path = three_models(tmp_path, per_model=50)

    args = ("--config", str(config), "estimate", str(path), "--endpoint", "gateway")
    plan = estimate_json(cli, *args)
    people = invoke(cli, *args)

    # No model has a limit of its own, yet the endpoint holds all 150 requests to 150/min.
    assert all(m["expected_duration"]["minutes"] is None for m in plan["models"])  # type: ignore[attr-defined]
    assert plan["duration"]["expected"] == {"minutes": 1.0, "slowest_model": "(all models)"}  # type: ignore[index]
    assert people.exit_code == 0, people.output
    said = " ".join(people.stdout.split())  # as rich wrapped it
    assert "rpm 150/min across all models" in said
    assert "bound by rpm 150/min across all models of the endpoint" in said


def test_without_endpoint_limits_the_plan_says_so_and_models_set_the_pace(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = three_models(tmp_path)

    plan = estimate_json(cli, "estimate", str(path), "--endpoint", "simulator")
    people = invoke(cli, "estimate", str(path), "--endpoint", "simulator")

    assert (plan["endpoint_limits"], plan["endpoint_duration"]) == (None, None)
    assert plan["duration"]["expected"]["minutes"] is None  # type: ignore[index]
    assert "nor the endpoint across its models" in " ".join(people.stdout.split())
