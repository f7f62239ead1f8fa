"""[pools.NAME] in the config file: what is accepted, and one clear line for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.config.file import endpoints_of, load_settings
from batchrun.errors import ConfigError, UnknownEndpointError
from batchrun.records import PoolMember
from batchrun.transport.endpoints import Endpoints


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Endpoints:
    path = tmp_path / "batchrun.toml"
    path.write_text(text)
    return endpoints_of(load_settings(path), env or {})


def test_members_are_names_or_tables_with_a_weight_and_a_model_map(tmp_path: Path) -> None:
    known = load(
        tmp_path,
        '[pools.claude]\nmembers = ["langdock-eu", { endpoint = "aimlapi", weight = 2.5, '
        'models = { "claude-sonnet-4-5" = "anthropic/claude-sonnet-4.5" } }]\n',
    )

    pool = known.pools["claude"]
    assert pool.members == (
        PoolMember("langdock-eu"),
        PoolMember("aimlapi", 2.5, {"claude-sonnet-4-5": "anthropic/claude-sonnet-4.5"}),
    )
    assert pool.members[1].model_for("claude-sonnet-4-5") == "anthropic/claude-sonnet-4.5"
    assert pool.members[1].model_for("claude-opus-4-1") == "claude-opus-4-1"
    assert known.check("claude") == "claude"
    assert list(known.members("claude")) == ["langdock-eu", "aimlapi"]


def test_a_pool_can_be_the_default_from_the_file_or_the_environment(tmp_path: Path) -> None:
    text = 'default_endpoint = "claude"\n[pools.claude]\nmembers = ["langdock-eu"]\n'
    assert load(tmp_path, text).default == "claude"
    both = text + '[pools.other]\nmembers = ["langdock-us"]\n'
    assert load(tmp_path, both, {"BATCHRUN_ENDPOINT": "other"}).default == "other"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ("[]", "pools.claude.members: name at least one endpoint"),
        ('["nope"]', 'pools.claude.members[0]: unknown endpoint "nope"'),
        ('["anthropic", "anthropic"]', 'pools.claude.members: lists "anthropic" twice'),
        ('[{ endpoint = "anthropic", weight = 0 }]', "members[0].weight: must be greater than 0"),
        (
            '[{ endpoint = "anthropic", wieght = 2 }]',
            'members[0].wieght: unknown key; did you mean "weight"?',
        ),
        ('"anthropic"', "pools.claude.members: must be an array, not a string"),
    ],
)
def test_a_bad_member_list_is_one_line_naming_the_file_and_key(
    tmp_path: Path, members: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"[pools.claude]\nmembers = {members}\n")

    assert str(tmp_path / "batchrun.toml") in caught.value.message
    assert message in caught.value.message


def test_a_pool_may_not_take_an_endpoint_s_name_nor_hold_a_pool(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='"anthropic" is already an endpoint'):
        load(tmp_path, '[pools.anthropic]\nmembers = ["langdock-eu"]\n')
    with pytest.raises(ConfigError, match="a pool cannot hold another pool"):
        load(
            tmp_path,
            '[pools.a]\nmembers = ["langdock-eu"]\n[pools.b]\nmembers = ["a"]\n',
        )


def test_an_unknown_name_lists_the_pools_too(tmp_path: Path) -> None:
    known = load(tmp_path, '[pools.claude]\nmembers = ["langdock-eu"]\n')
    with pytest.raises(UnknownEndpointError, match="pools: claude"):
        known.check("claud")
