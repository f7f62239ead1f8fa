"""The config file's ``stream_threshold_tokens``: read into the endpoint, checked with one
line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.config.file import endpoints_of, load_settings
from batchrun.errors import ConfigError
from batchrun.transport.endpoints import Endpoints


def resolve(tmp_path: Path, text: str) -> Endpoints:
    path = tmp_path / "batchrun.toml"
    path.write_text(text)
    return endpoints_of(load_settings(path), {})


def test_the_threshold_is_unset_by_default_and_set_per_endpoint(tmp_path: Path) -> None:
    known = resolve(
        tmp_path,
        """
        [endpoints.anthropic]
        stream_threshold_tokens = 0

        [endpoints.gateway]
        base_url = "https://gateway.example"
        auth = "none"
        stream_threshold_tokens = 4096
        """,
    )
    assert known.get("anthropic").stream_threshold_tokens == 0
    assert known.get("gateway").stream_threshold_tokens == 4096
    assert known.get("langdock-eu").stream_threshold_tokens is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-1", "must be at least 0"),
        ("1.5", "must be a whole number, not 1.5"),
        ('"8192"', "must be a whole number, not a string"),
        ("true", "must be a whole number, not a boolean"),
    ],
)
def test_a_bad_threshold_names_the_file_and_the_key(
    tmp_path: Path, value: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve(tmp_path, f"[endpoints.anthropic]\nstream_threshold_tokens = {value}\n")
    path = tmp_path / "batchrun.toml"
    assert str(raised.value) == f"{path}: endpoints.anthropic.stream_threshold_tokens: {problem}"


def test_a_misspelt_threshold_gets_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='did you mean "stream_threshold_tokens"'):
        resolve(tmp_path, "[endpoints.anthropic]\nstream_threshold = 100\n")
