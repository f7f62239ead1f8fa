"""The config file and endpoint resolution: where the file is found, how a file changes the
built-in endpoints, and how the environment changes both."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.config.file import (
    Settings,
    endpoints_of,
    find_config_file,
    load_endpoints,
    load_settings,
)
from batchrun.errors import ConfigError, MissingApiKeyError
from batchrun.limits.dimensions import RateLimits
from batchrun.transport.endpoints import (
    LANGDOCK_LIMITS,
    Endpoints,
    auth_headers,
    builtin_endpoints,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def resolve(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Endpoints:
    path = write(tmp_path / "batchrun.toml", text)
    return endpoints_of(load_settings(path), env or {})


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """A config file in each of the four places, and an environment that finds them."""
    return {
        "flag": write(tmp_path / "flag.toml", ""),
        "env": write(tmp_path / "env.toml", ""),
        "cwd": write(tmp_path / "work" / "batchrun.toml", ""),
        "home": write(tmp_path / "home" / ".config" / "batchrun" / "config.toml", ""),
    }


def test_the_config_file_is_the_first_found_of_flag_env_cwd_home(
    tmp_path: Path, places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"BATCHRUN_CONFIG": str(places["env"]), "HOME": str(tmp_path / "home")}
    cwd = tmp_path / "work"

    assert find_config_file(places["flag"], env, cwd) == places["flag"]
    assert find_config_file(None, env, cwd) == places["env"]
    # Named by its full path from elsewhere, as the user sees it from the folder itself.
    assert find_config_file(None, {"HOME": env["HOME"]}, cwd) == cwd / "batchrun.toml"
    monkeypatch.chdir(cwd)
    assert find_config_file(None, {"HOME": env["HOME"]}, cwd) == Path("batchrun.toml")
    assert find_config_file(None, {"HOME": env["HOME"]}, tmp_path) == places["home"]
    assert find_config_file(None, {"HOME": str(tmp_path / "nobody")}, tmp_path) is None


def test_xdg_config_home_replaces_dot_config(tmp_path: Path) -> None:
    xdg = write(tmp_path / "xdg" / "batchrun" / "config.toml", "")
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}

    assert find_config_file(None, env, tmp_path) == xdg


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="named by --config"):
        find_config_file(tmp_path / "missing.toml", {}, tmp_path)
    with pytest.raises(ConfigError, match="named by BATCHRUN_CONFIG"):
        find_config_file(None, {"BATCHRUN_CONFIG": str(tmp_path / "missing.toml")}, tmp_path)


def test_without_a_file_the_builtins_are_used_and_anthropic_is_the_default() -> None:
    known = endpoints_of(Settings(), {})

    assert sorted(known.by_name) == [
        "aimlapi",
        "anthropic",
        "langdock-eu",
        "langdock-us",
        "simulator",
    ]
    assert known.default == "anthropic"
    assert known.get("langdock-us").messages_url == (
        "https://api.langdock.com/anthropic/us/v1/messages"
    )
    assert known.get("aimlapi").messages_url == "https://api.aimlapi.com/messages"
    assert known.get("langdock-eu").limits == {"*": RateLimits(rpm=500, tpm=60_000)}


def test_a_file_overrides_only_what_it_names_and_merges_tables(tmp_path: Path) -> None:
    known = resolve(
        tmp_path,
        """
        [endpoints.langdock-eu]
        base_url = "http://127.0.0.1:9"
        headers = { "x-team" = "research" }
        timeout_s = 30

        [endpoints.langdock-eu.limits."claude-3-haiku-20240307"]
        rpm = 1000
        """,
    )

    endpoint = known.get("langdock-eu")
    assert endpoint.messages_url == "http://127.0.0.1:9/anthropic/eu/v1/messages"
    assert (endpoint.auth, endpoint.api_key_env) == ("bearer", "LANGDOCK_API_KEY")
    assert endpoint.headers == {"anthropic-version": "2023-06-01", "x-team": "research"}
    assert endpoint.limits == {
        "*": LANGDOCK_LIMITS,
        "claude-3-haiku-20240307": RateLimits(rpm=1000),
    }
    assert endpoint.limits_for("claude-3-haiku-20240307") == RateLimits(rpm=1000)
    assert endpoint.limits_for("claude-sonnet-4-5") == LANGDOCK_LIMITS
    assert (endpoint.timeout_s, endpoint.max_attempts) == (30.0, None)
    assert endpoint.sources == ("built-in", str(tmp_path / "batchrun.toml"))
    assert known.get("langdock-us") == builtin_endpoints({})["langdock-us"]


def test_a_new_endpoint_has_the_documented_defaults(tmp_path: Path) -> None:
    known = resolve(
        tmp_path,
        """
        default_endpoint = "mygateway"
        [endpoints.mygateway]
        base_url = "https://gateway.example/anthropic/"
        api_key_env = "MYGATEWAY_KEY"
        """,
    )

    endpoint = known.get("mygateway")
    assert endpoint.messages_url == "https://gateway.example/anthropic/v1/messages"
    assert endpoint.auth == "x-api-key"
    assert endpoint.headers == {"anthropic-version": "2023-06-01"}
    assert endpoint.sources == (str(tmp_path / "batchrun.toml"),)
    assert (known.default, known.default_source) == ("mygateway", str(tmp_path / "batchrun.toml"))


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    text = """
        default_endpoint = "langdock-eu"
        [endpoints.anthropic]
        base_url = "http://from-the-file.example"
        """
    env = {"ANTHROPIC_BASE_URL": "http://from-env.example", "BATCHRUN_ENDPOINT": "aimlapi"}

    from_file = resolve(tmp_path, text)
    from_env = resolve(tmp_path, text, env)

    assert from_file.get("anthropic").base_url == "http://from-the-file.example"
    assert from_file.default == "langdock-eu"
    assert from_env.get("anthropic").base_url == "http://from-env.example"
    assert from_env.get("anthropic").sources[-1] == "ANTHROPIC_BASE_URL"
    assert (from_env.default, from_env.default_source) == ("aimlapi", "BATCHRUN_ENDPOINT")


def test_load_endpoints_finds_the_file_through_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "team.toml", 'default_endpoint = "langdock-us"\n')

    known = load_endpoints(None, env={"BATCHRUN_CONFIG": str(path)}, cwd=tmp_path)

    assert known.default == "langdock-us"
    assert known.config_path == path


def test_auth_headers_read_the_key_and_extra_header_variables(tmp_path: Path) -> None:
    known = resolve(
        tmp_path,
        """
        [endpoints.cf]
        base_url = "https://gateway.ai.cloudflare.com/v1/acct/gw/anthropic"
        auth = "bearer"
        api_key_env = "CF_PROVIDER_KEY"
        headers_env = { "cf-aig-authorization" = "CF_GATEWAY_TOKEN" }
        """,
    )
    endpoint = known.get("cf")
    env = {"CF_PROVIDER_KEY": "provider-key", "CF_GATEWAY_TOKEN": "Bearer gateway-token"}

    headers = auth_headers(endpoint, env)

    assert headers.headers["authorization"] == "Bearer provider-key"
    assert headers.headers["cf-aig-authorization"] == "Bearer gateway-token"
    # Both values came from the environment, so both are cut out of what a server echoes.
    assert {"provider-key", "Bearer gateway-token", "gateway-token"} <= set(headers.secrets)
    with pytest.raises(MissingApiKeyError, match="CF_GATEWAY_TOKEN is not set"):
        auth_headers(endpoint, {"CF_PROVIDER_KEY": "provider-key"})


def test_the_documented_example_config_is_valid(tmp_path: Path) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "endpoints.md").read_text()
    example = page.split("```toml\n", 1)[1].split("```", 1)[0]

    known = resolve(tmp_path, example)

    assert known.default == "mygateway"
    assert known.get("mygateway").limits_for("claude-sonnet-4-5") == RateLimits(rpm=100)
    assert known.get("langdock-eu").timeout_s == 300


def test_endpoint_limits_cover_all_models_and_merge_over_the_built_ins_by_dimension(
    tmp_path: Path,
) -> None:
    known = resolve(
        tmp_path,
        """
        [endpoints.anthropic.endpoint_limits]
        rpm = 1000
        tpm = 400000

        [endpoints.mygateway]
        base_url = "https://g.example"
        auth = "none"
        endpoint_limits = { rpm = 300 }
        [endpoints.mygateway.limits."*"]
        rpm = 600
        """,
    )

    assert known.get("anthropic").endpoint_limits == RateLimits(rpm=1000, tpm=400_000)
    gateway = known.get("mygateway")
    assert gateway.endpoint_limits == RateLimits(rpm=300)
    # The per-model table stays per model: the endpoint's limits are not one of its entries.
    assert gateway.limits == {"*": RateLimits(rpm=600)}
    assert known.get("langdock-eu").endpoint_limits == RateLimits()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "[endpoints.anthropic.endpoint_limits]\nrpn = 50\n",
            'endpoints.anthropic.endpoint_limits.rpn: unknown key; did you mean "rpm"?',
        ),
        (
            "[endpoints.anthropic.endpoint_limits]\nrpm = 0\n",
            "endpoints.anthropic.endpoint_limits.rpm: must be greater than 0",
        ),
        (
            "[endpoints.anthropic]\nendpoint_limits = 5\n",
            "endpoints.anthropic.endpoint_limits: must be a table, not 5",
        ),
        (
            "[endpoints.anthropic]\nendpoint_limit = { rpm = 5 }\n",
            'endpoints.anthropic.endpoint_limit: unknown key; did you mean "endpoint_limits"?',
        ),
        (
            '[endpoints.anthropic.limits."(all models)"]\nrpm = 5\n',
            'endpoints.anthropic.limits."(all models)": "(all models)" is reserved; limits '
            "across all models of an endpoint go in [endpoints.NAME.endpoint_limits]",
        ),
    ],
    ids=["unknown-dimension", "zero", "not-a-table", "misspelt-table", "reserved-entry"],
)
def test_a_bad_endpoint_limits_table_names_the_file_and_the_key(
    tmp_path: Path, text: str, error: str
) -> None:
    path = write(tmp_path / "batchrun.toml", text)

    with pytest.raises(ConfigError) as raised:
        load_settings(path)

    assert str(raised.value) == f"{path}: {error}"
