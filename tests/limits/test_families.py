"""Model families: which limits entry a model falls under, the limiter key it is paced under,
and the config file's checks of family patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.config.file import endpoints_of, load_settings
from batchrun.errors import ConfigError
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.families import entry_for, entry_problem, matches
from batchrun.limits.limiter import Limiter

ENTRIES = ["*", "claude-sonnet-4*", "claude-sonnet-4-5*", "claude-*", "claude-sonnet-4-5"]


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        # An exact entry wins over every pattern.
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        # The longest matching pattern wins over shorter ones.
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5*"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4*"),
        ("claude-opus-4-1", "claude-*"),
        # "*" catches the rest.
        ("gpt-4o", "*"),
    ],
)
def test_an_exact_entry_wins_then_the_longest_pattern_then_the_catch_all(
    model: str, entry: str
) -> None:
    assert entry_for(model, ENTRIES) == entry


def test_a_model_no_entry_covers_has_no_limits() -> None:
    assert entry_for("gpt-4o", ["claude-*", "claude-sonnet-4-5"]) is None


def test_patterns_of_the_same_length_are_chosen_alphabetically() -> None:
    assert entry_for("claude-x-y", ["claude-*-y", "claude-x-*"]) == "claude-*-y"


@pytest.mark.parametrize(
    ("pattern", "model", "matched"),
    [
        ("claude-sonnet-4*", "claude-sonnet-4", True),
        ("claude-sonnet-4*", "claude-sonnet-45", True),
        ("claude-*-4-5", "claude-opus-4-5", True),
        ("claude-*-4-5", "claude-opus-4-5-1", False),
        # Only * is special: dots, brackets and question marks are literal.
        ("claude.3*", "claudeX3-opus", False),
        ("*sonnet*", "anthropic/claude-sonnet-4", True),
    ],
)
def test_only_the_star_is_a_wildcard(pattern: str, model: str, matched: bool) -> None:
    assert matches(pattern, model) is matched


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("claude-sonnet-4*", None),
        ("*", None),
        ("claude-sonnet-4-5", None),
        ("claude-[34]*", "only * is a wildcard"),
        ("claude-?", "only * is a wildcard"),
        ("**", "a pattern needs more than *"),
        ("", "name a model"),
    ],
)
def test_entry_names_are_checked(entry: str, problem: str | None) -> None:
    found = entry_problem(entry)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_the_limiter_paces_a_family_under_one_key_and_each_other_model_under_its_own() -> None:
    limiter = Limiter(
        {
            ("ep", "claude-sonnet-4*"): RateLimits(rpm=4000),
            ("ep", "claude-sonnet-4-5"): RateLimits(rpm=100),
            ("ep", "*"): RateLimits(rpm=50),
        },
        overrides=RateLimits(tpm=90_000),
    )

    assert limiter.key_for("ep", "claude-sonnet-4-20250514") == ("ep", "claude-sonnet-4*")
    assert limiter.key_for("ep", "claude-sonnet-4-5-20250929") == ("ep", "claude-sonnet-4*")
    # A key maps to itself; an exact entry and "*" keep a key per model.
    assert limiter.key_for("ep", "claude-sonnet-4*") == ("ep", "claude-sonnet-4*")
    assert limiter.key_for("ep", "claude-sonnet-4-5") == ("ep", "claude-sonnet-4-5")
    assert limiter.key_for("ep", "claude-haiku-4-5") == ("ep", "claude-haiku-4-5")
    assert limiter.key_for("other", "claude-sonnet-4-1") == ("other", "claude-sonnet-4-1")
    # The run's flags apply to every key: a model's own, or its family's shared one.
    family = limiter.limits_for(("ep", "claude-sonnet-4-1"))
    assert family == RateLimits(rpm=4000, tpm=90_000)
    assert limiter.limits_for(("ep", "claude-haiku-4-5")) == RateLimits(rpm=50, tpm=90_000)


def _load(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "batchrun.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value


def test_the_config_file_refuses_other_wildcards_naming_the_file_and_key(tmp_path: Path) -> None:
    error = _load(tmp_path, '[endpoints.anthropic.limits."claude-[34]*"]\nrpm = 4000\n')

    assert str(error).startswith(
        f'{tmp_path / "batchrun.toml"}: endpoints.anthropic.limits."claude-[34]*": '
        "only * is a wildcard"
    )


def test_the_config_file_refuses_a_pattern_of_stars_only(tmp_path: Path) -> None:
    error = _load(tmp_path, '[endpoints.anthropic.limits."**"]\nrpm = 4000\n')

    assert 'endpoints.anthropic.limits."**": a pattern needs more than *' in str(error)


def test_an_endpoint_from_the_config_file_gives_a_family_its_limits(tmp_path: Path) -> None:
    path = tmp_path / "batchrun.toml"
    path.write_text(
        '[endpoints.anthropic.limits."claude-sonnet-4*"]\nrpm = 4000\n'
        '[endpoints.anthropic.limits."*"]\nrpm = 50\n'
    )

    endpoint = endpoints_of(load_settings(path), {}).get("anthropic")

    assert endpoint.limits_for("claude-sonnet-4-5") == RateLimits(rpm=4000)
    assert endpoint.limits_for("claude-opus-4-1") == RateLimits(rpm=50)
