"""structured_outputs in an endpoint's table: how its requests ask for structured answers;
the built-in seeds' own choices; a pool asks the way every member takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.config.file import endpoints_of, load_settings
from batchrun.errors import ConfigError
from batchrun.transport.endpoints import Endpoints


def load(tmp_path: Path, text: str) -> Endpoints:
    path = tmp_path / "batchrun.toml"
    path.write_text(text)
    return endpoints_of(load_settings(path), {})


def test_the_built_in_seeds_ask_natively_only_where_output_config_is_known_to_pass(
    tmp_path: Path,
) -> None:
    known = load(tmp_path, "")

    modes = {name: known.structured_outputs(name) for name in known.by_name}

    assert modes == {
        "anthropic": "native",
        "simulator": "native",
        "langdock-eu": "tool",
        "langdock-us": "tool",
        "aimlapi": "tool",
    }


def test_a_file_sets_it_for_a_new_endpoint_and_changes_a_built_in(tmp_path: Path) -> None:
    known = load(
        tmp_path,
        '[endpoints.gateway]\nbase_url = "https://gw.example"\nauth = "none"\n'
        'structured_outputs = "tool"\n'
        '[endpoints.langdock-eu]\nstructured_outputs = "native"\n'
        '[endpoints.plain]\nbase_url = "https://plain.example"\nauth = "none"\n',
    )

    assert known.structured_outputs("gateway") == "tool"
    assert known.structured_outputs("langdock-eu") == "native"
    assert known.structured_outputs("plain") == "native"


def test_a_pool_asks_natively_only_when_every_member_does(tmp_path: Path) -> None:
    known = load(
        tmp_path,
        '[pools.mixed]\nmembers = ["anthropic", "langdock-eu"]\n'
        '[pools.native]\nmembers = ["anthropic", "simulator"]\n',
    )

    assert known.structured_outputs("mixed") == "tool"
    assert known.structured_outputs("native") == "native"


def test_another_value_is_refused_naming_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, '[endpoints.anthropic]\nstructured_outputs = "json"\n')

    assert str(raised.value).endswith(
        'batchrun.toml: endpoints.anthropic.structured_outputs: must be "native" or "tool", '
        'not "json"'
    )
