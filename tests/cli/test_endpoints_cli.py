"""Endpoints through the CLI: what each built-in sends, where the config file is found, what
wins over what, how a bad file is reported, and what `batchrun endpoints` shows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from batchrun.cli.app import app
from batchrun.simulator import SimulatorConfig, create_app, running_simulator
from tests.conftest import cli_env

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "requests.jsonl"


@pytest.fixture
def cli(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """A CLI in an empty working directory with an empty home, so that no config file of
    the machine running the tests is found."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield CliRunner(env=cli_env(sqlite_url, tmp_path / "home"))


def invoke(cli: CliRunner, *args: str, **env: str) -> Result:
    return cli.invoke(app, list(args), env=env or None)


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def stored_endpoint(cli: CliRunner, batch_id: str) -> str:
    return str(json.loads(invoke(cli, "status", batch_id, "--json").stdout)["endpoint"])


@pytest.mark.parametrize(
    ("name", "key_variable", "path", "auth_scheme"),
    [
        ("anthropic", "ANTHROPIC_API_KEY", "/v1/messages", "x-api-key"),
        ("langdock-eu", "LANGDOCK_API_KEY", "/anthropic/eu/v1/messages", "bearer"),
        ("langdock-us", "LANGDOCK_API_KEY", "/anthropic/us/v1/messages", "bearer"),
        ("aimlapi", "AIMLAPI_API_KEY", "/messages", "bearer"),
    ],
)
def test_each_builtin_endpoint_sends_its_path_auth_and_version(
    cli: CliRunner, tmp_path: Path, name: str, key_variable: str, path: str, auth_scheme: str
) -> None:
    key = f"key-for-{name}"
    simulator = create_app(SimulatorConfig(required_api_key=key))
    with running_simulator(app=simulator) as url:
        config = write_config(tmp_path / "c.toml", f'[endpoints.{name}]\nbase_url = "{url}"\n')
        batch_id = invoke(cli, "submit", str(SAMPLES), "--endpoint", name).stdout.strip()
        run = invoke(cli, "--config", str(config), "run", batch_id, **{key_variable: key})

    assert run.exit_code == 0, run.output
    assert len(simulator.stats.log) == 6
    key_hash = hashlib.sha256(key.encode()).hexdigest()[:12]
    for entry in simulator.stats.log:
        assert entry.path == path
        assert entry.status == "200"
        assert entry.headers["auth_scheme"] == auth_scheme
        assert entry.headers["anthropic-version"] == "2023-06-01"
        assert entry.headers["api_key_sha256_prefix"] == key_hash


def test_submit_endpoint_is_flag_then_env_then_file_then_builtin(
    cli: CliRunner, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "work" / "batchrun.toml", 'default_endpoint = "langdock-eu"\n')

    def submitted(*flag: str, **env: str) -> str:
        result = invoke(cli, "submit", str(SAMPLES), *flag, **env)
        assert result.exit_code == 0, result.output
        return stored_endpoint(cli, result.stdout.strip())

    assert submitted("--endpoint", "simulator", BATCHRUN_ENDPOINT="aimlapi") == "simulator"
    assert submitted(BATCHRUN_ENDPOINT="aimlapi") == "aimlapi"
    assert submitted() == "langdock-eu"
    config.unlink()
    assert submitted() == "anthropic"


def test_anthropic_base_url_in_the_environment_wins_over_the_file(
    cli: CliRunner, tmp_path: Path
) -> None:
    # Nothing listens on port 9 of the loopback: the file's URL would fail.
    write_config(
        tmp_path / "work" / "batchrun.toml",
        '[endpoints.anthropic]\nbase_url = "http://127.0.0.1:9"\n',
    )
    batch_id = invoke(cli, "submit", str(SAMPLES)).stdout.strip()

    with running_simulator() as url:
        run = invoke(cli, "run", batch_id, ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="k")

    assert run.exit_code == 0, run.output


@pytest.mark.parametrize("place", ["--config", "BATCHRUN_CONFIG", "cwd", "home", "xdg"])
def test_the_config_file_is_found_in_each_place(cli: CliRunner, tmp_path: Path, place: str) -> None:
    paths = {
        "--config": tmp_path / "flag.toml",
        "BATCHRUN_CONFIG": tmp_path / "env.toml",
        "cwd": tmp_path / "work" / "batchrun.toml",
        "home": tmp_path / "home" / ".config" / "batchrun" / "config.toml",
        "xdg": tmp_path / "xdg" / "batchrun" / "config.toml",
    }
    write_config(paths[place], 'default_endpoint = "langdock-us"\n')
    args = ["--config", str(paths[place])] if place == "--config" else []
    env = {"BATCHRUN_CONFIG": str(paths[place])} if place == "BATCHRUN_CONFIG" else {}
    if place == "xdg":
        env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")

    listed = json.loads(invoke(cli, *args, "endpoints", "--json", **env).stdout)

    assert listed["default_endpoint"] == "langdock-us"
    found = Path(listed["config_file"])
    assert (found if found.is_absolute() else tmp_path / "work" / found) == paths[place]


def test_only_the_first_config_file_found_is_read(cli: CliRunner, tmp_path: Path) -> None:
    flag = write_config(tmp_path / "flag.toml", 'default_endpoint = "aimlapi"\n')
    env_file = write_config(tmp_path / "env.toml", 'default_endpoint = "langdock-eu"\n')
    # Broken files further down the list must not matter.
    write_config(tmp_path / "work" / "batchrun.toml", "not toml at all")
    write_config(tmp_path / "home" / ".config" / "batchrun" / "config.toml", "[[")

    with_flag = invoke(
        cli, "--config", str(flag), "endpoints", "--json", BATCHRUN_CONFIG=str(env_file)
    )
    with_env = invoke(cli, "endpoints", "--json", BATCHRUN_CONFIG=str(env_file))

    assert json.loads(with_flag.stdout)["default_endpoint"] == "aimlapi"
    assert json.loads(with_env.stdout)["default_endpoint"] == "langdock-eu"


INVALID = [
    pytest.param(
        '[endpoints.mygateway]\nbase_url = "https://g.example"\nauth = "basic"\n',
        'endpoints.mygateway.auth: must be "bearer", "x-api-key" or "none", not "basic"',
        id="bad-auth",
    ),
    pytest.param(
        '[endpoints.mygateway]\nbase_url = "https://g.example"\ntimeout_s 600\n',
        ":3:11: invalid TOML: Expected '=' after a key in a key/value pair",
        id="toml-syntax",
    ),
    pytest.param(
        '[endpoints.mygateway]\nbase_ur = "https://g.example"\n',
        'endpoints.mygateway.base_ur: unknown key; did you mean "base_url"?',
        id="unknown-key",
    ),
    pytest.param(
        'default_endpoints = "anthropic"\n',
        'default_endpoints: unknown key; did you mean "default_endpoint"?',
        id="unknown-top-level-key",
    ),
    pytest.param(
        '[endpoints.anthropic.limits."*"]\nrpn = 50\n',
        'endpoints.anthropic.limits."*".rpn: unknown key; did you mean "rpm"?',
        id="unknown-limit",
    ),
    pytest.param(
        '[endpoints.my-gateway]\nbase_url = "https://g.example"\napi_key = "sk-in-the-file"\n',
        "endpoints.my-gateway.api_key: API keys do not belong in the config file; export the "
        'key as an environment variable and name it with api_key_env = "MY_GATEWAY_API_KEY"',
        id="api-key-in-file",
    ),
    pytest.param(
        '[endpoints.anthropic]\napi_key_env = "sk-in-the-file"\n',
        "endpoints.anthropic.api_key_env: must be the name of an environment variable "
        "(letters, digits and '_'), not the key itself",
        id="key-in-api-key-env",
    ),
    pytest.param(
        '[endpoints.anthropic]\nheaders = { "X-Api-Key" = "sk-in-the-file" }\n',
        "endpoints.anthropic.headers.X-Api-Key: credentials do not belong in the config file; "
        "set auth and api_key_env, or name a variable in headers_env",
        id="key-in-headers",
    ),
    pytest.param(
        '[endpoints.anthropic]\ntimeout_s = "10m"\n',
        "endpoints.anthropic.timeout_s: must be a number, not a string",
        id="wrong-type",
    ),
    pytest.param(
        "[endpoints.anthropic]\nmax_attempts = 2.5\n",
        "endpoints.anthropic.max_attempts: must be a whole number, not 2.5",
        id="fraction",
    ),
    pytest.param(
        'token = "sk-in-the-file"\n',
        "token: API keys do not belong in the config file; export the key as an environment "
        'variable and name it with api_key_env = "NAME_API_KEY" in [endpoints.NAME]',
        id="top-level-key",
    ),
    pytest.param(
        "[endpoints.anthropic]\nmax_attempts = 0\n",
        "endpoints.anthropic.max_attempts: must be at least 1",
        id="too-small",
    ),
    pytest.param(
        '[endpoints.anthropic.limits."claude-3-haiku-20240307"]\ntpm = -5\n',
        "endpoints.anthropic.limits.claude-3-haiku-20240307.tpm: must be greater than 0",
        id="negative-limit",
    ),
    pytest.param(
        "[endpoints.anthropic.extra_body]\nsince = 2026-01-01\n",
        "endpoints.anthropic.extra_body.since: TOML dates and times have no JSON form; "
        "write it as a string",
        id="extra-body-date",
    ),
    pytest.param(
        "[endpoints.anthropic.extra_body]\nstream = true\n",
        "endpoints.anthropic.extra_body.stream: batchrun needs whole responses, not streams; "
        "remove it",
        id="extra-body-stream",
    ),
    pytest.param(
        '[endpoints.mygateway]\napi_key_env = "MYGATEWAY_KEY"\n',
        "endpoints.mygateway.base_url: required for a new endpoint (built-in endpoints: "
        "aimlapi, anthropic, langdock-eu, langdock-us, simulator)",
        id="new-without-base-url",
    ),
    pytest.param(
        '[endpoints.mygateway]\nbase_url = "gateway.example"\nauth = "none"\n',
        "endpoints.mygateway.base_url: must be an http:// or https:// URL",
        id="url-without-scheme",
    ),
    pytest.param(
        '[endpoints.mygateway]\nbase_url = "https://g.example"\nauth = "bearer"\n',
        'endpoints.mygateway.api_key_env: required with auth = "bearer"',
        id="bearer-without-key-variable",
    ),
    pytest.param(
        '[endpoints."my gateway"]\nbase_url = "https://g.example"\nauth = "none"\n',
        "endpoints.\"my gateway\": an endpoint name is 1-64 letters, digits, '_', '.' or '-'",
        id="bad-name",
    ),
    pytest.param(
        'default_endpoint = "langdock"\n',
        "default_endpoint: unknown endpoint \"langdock\" (did you mean 'langdock-eu' or "
        "'langdock-us'?); known endpoints and pools: aimlapi, anthropic, langdock-eu, "
        "langdock-us, simulator",
        id="unknown-default",
    ),
    pytest.param(
        '[endpoints.simulator]\nbase_url = "http://127.0.0.1:8765"\n',
        "endpoints.simulator.base_url: the built-in simulator runs in-process",
        id="simulator-url",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_an_invalid_config_file_is_one_line_naming_file_key_and_problem(
    cli: CliRunner, tmp_path: Path, text: str, expected: str
) -> None:
    write_config(tmp_path / "work" / "batchrun.toml", text)
    # A TOML syntax error is placed file:line:column; every other problem file: key: ...
    prefix = "error: batchrun.toml" + ("" if expected.startswith(":") else ": ")

    for command in (["endpoints"], ["submit", str(SAMPLES)], ["run"]):
        result = invoke(cli, *command)

        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(prefix + expected)
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.output
        assert "sk-in-the-file" not in result.output


def test_every_problem_of_a_file_is_listed_one_per_line(cli: CliRunner, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "bad.toml",
        '[endpoints.anthropic]\nauth = "basic"\ntimeout_s = "slow"\nmax_attemps = 3\n',
    )

    result = invoke(cli, "--config", str(config), "endpoints")

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f'error: {config}: endpoints.anthropic.auth: must be "bearer", "x-api-key" or "none", '
        'not "basic"',
        f"{config}: endpoints.anthropic.timeout_s: must be a number, not a string",
        f'{config}: endpoints.anthropic.max_attemps: unknown key; did you mean "max_attempts"?',
    ]


def test_a_missing_or_unreadable_config_file_is_one_line(cli: CliRunner, tmp_path: Path) -> None:
    missing = invoke(cli, "--config", str(tmp_path / "nope.toml"), "endpoints")
    from_env = invoke(cli, "endpoints", BATCHRUN_CONFIG=str(tmp_path / "nope.toml"))
    binary = write_config(tmp_path / "binary.toml", "")
    binary.write_bytes(b"\xff\xfe\x00")
    not_text = invoke(cli, "--config", str(binary), "endpoints")

    assert missing.exit_code == from_env.exit_code == not_text.exit_code == 1
    assert "nope.toml: no such config file (named by --config)" in missing.stderr
    assert "nope.toml: no such config file (named by BATCHRUN_CONFIG)" in from_env.stderr
    assert f"{binary}: not UTF-8 text" in not_text.stderr


def test_a_broken_config_file_does_not_break_help_or_batch_views(
    cli: CliRunner, tmp_path: Path
) -> None:
    write_config(tmp_path / "work" / "batchrun.toml", "[[")

    assert invoke(cli, "--help").exit_code == 0
    assert invoke(cli, "submit", "--help").exit_code == 0
    assert invoke(cli, "list").exit_code == 0


def test_endpoints_never_print_a_key_value(cli: CliRunner, tmp_path: Path) -> None:
    secret = "sk-recognisable-SECRET-0123456789"
    config = write_config(
        tmp_path / "c.toml",
        """
        [endpoints.cf]
        base_url = "https://gateway.ai.cloudflare.com/v1/acct/gw/anthropic"
        auth = "bearer"
        api_key_env = "CF_KEY"
        headers_env = { "cf-aig-authorization" = "CF_TOKEN" }
        """,
    )
    env = {
        "ANTHROPIC_API_KEY": secret,
        "LANGDOCK_API_KEY": secret,
        "AIMLAPI_API_KEY": secret,
        "CF_KEY": secret,
        "CF_TOKEN": secret,
    }

    as_json = invoke(cli, "--config", str(config), "endpoints", "--json", **env)
    as_text = invoke(cli, "--config", str(config), "endpoints", **env)

    assert as_json.exit_code == as_text.exit_code == 0
    for result in (as_json, as_text):
        assert secret not in result.output
        assert "SECRET" not in result.output
    listed = {e["name"]: e for e in json.loads(as_json.stdout)["data"]}
    assert listed["langdock-eu"]["api_key_env"] == "LANGDOCK_API_KEY"
    assert listed["langdock-eu"]["api_key_set"] is True
    assert listed["cf"]["headers_env"] == {
        "cf-aig-authorization": {"variable": "CF_TOKEN", "set": True}
    }
    assert "CF_KEY (set)" in as_text.stdout


def test_endpoints_lists_url_auth_key_limits_default_and_origin(
    cli: CliRunner, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.toml",
        """
        default_endpoint = "mygateway"

        [endpoints.mygateway]
        base_url = "https://gateway.example"
        auth = "bearer"
        api_key_env = "MYGATEWAY_KEY"
        extra_body = { preference = "speed" }
        max_attempts = 3

        [endpoints.mygateway.limits."claude-3-haiku-20240307"]
        rpm = 500
        tpm = 60000

        [endpoints.mygateway.endpoint_limits]
        rpm = 800

        [endpoints.langdock-eu]
        timeout_s = 120
        """,
    )

    result = invoke(cli, "--config", str(config), "endpoints", "--json")

    listed = json.loads(result.stdout)
    by_name = {e["name"]: e for e in listed["data"]}
    assert (listed["default_endpoint"], listed["default_from"]) == ("mygateway", str(config))
    gateway = by_name["mygateway"]
    assert gateway["url"] == "https://gateway.example/v1/messages"
    assert (gateway["auth"], gateway["api_key_env"], gateway["api_key_set"]) == (
        "bearer",
        "MYGATEWAY_KEY",
        False,
    )
    assert gateway["limits"] == {
        "claude-3-haiku-20240307": {"rpm": 500, "tpm": 60000, "itpm": None, "otpm": None}
    }
    assert gateway["endpoint_limits"] == {"rpm": 800, "tpm": None, "itpm": None, "otpm": None}
    assert by_name["langdock-eu"]["endpoint_limits"]["rpm"] is None
    assert (gateway["max_attempts"], gateway["timeout_s"]) == (3, 600)
    assert gateway["extra_body"] == {"preference": "speed"}
    assert (gateway["default"], gateway["sources"]) == (True, [str(config)])
    assert by_name["langdock-eu"]["sources"] == ["built-in", str(config)]
    assert by_name["langdock-eu"]["limits"] == {
        "*": {"rpm": 500, "tpm": 60000, "itpm": None, "otpm": None}
    }
    assert by_name["simulator"]["api_key_set"] is None
    text = invoke(cli, "--config", str(config), "endpoints").stdout
    assert "mygateway (default)" in text
    assert "  all models: 800 rpm together" in text
    assert "https://api.langdock.com/anthropic/eu/v1/messages" in text
    assert f"defined in: built-in + {config}" in text
