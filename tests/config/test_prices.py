"""The price table, costs derived from token counts, and [prices."MODEL"] in the config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.config.file import load_settings
from batchrun.config.prices import (
    DEFAULT_PRICES,
    CostTotal,
    ModelPrice,
    PriceTable,
    cache_accounting,
    cost_of,
    describe_cost,
    format_usd,
)
from batchrun.errors import ConfigError
from batchrun.records import CacheRefreshModel, CacheRefreshTotals, ModelTokens, Usage


@pytest.mark.parametrize(
    ("model", "input_usd", "output_usd"),
    [
        # The models the gateways serve, by their dated ids.
        ("claude-3-haiku-20240307", 0.25, 1.25),
        ("claude-3-sonnet-20240229", 3.0, 15.0),
        ("claude-3-5-sonnet-20240620", 3.0, 15.0),
        ("claude-3-opus-20240229", 15.0, 75.0),
        # Current models, by alias and by dated id.
        ("claude-sonnet-4-5", 3.0, 15.0),
        ("claude-sonnet-4-5-20250929", 3.0, 15.0),
        ("claude-haiku-4-5-20251001", 1.0, 5.0),
        ("claude-opus-4-1-20250805", 15.0, 75.0),
        ("claude-opus-4-5", 5.0, 25.0),
        ("claude-sonnet-5", 2.0, 10.0),
        ("claude-3-5-sonnet-latest", 3.0, 15.0),
    ],
)
def test_built_in_prices_cover_the_gateway_and_current_models(
    model: str, input_usd: float, output_usd: float
) -> None:
    price = PriceTable().price_for(model)

    assert price is not None
    assert (price.input_per_mtok_usd, price.output_per_mtok_usd) == (input_usd, output_usd)


def test_every_built_in_cache_price_is_below_input_and_cache_writes_above() -> None:
    for model, price in DEFAULT_PRICES.items():
        assert price.cache_read_per_mtok_usd < price.input_per_mtok_usd, model
        assert price.cache_write_per_mtok_usd > price.input_per_mtok_usd, model


def test_an_unknown_model_has_no_price_and_its_cost_is_unknown_not_zero() -> None:
    table = PriceTable()
    tokens = [
        ModelTokens("claude-sonnet-4-5", 2, input_tokens=1_000_000),
        ModelTokens("my-finetune", 3, input_tokens=500, output_tokens=20),
    ]

    total = cost_of(tokens, table)

    assert table.price_for("my-finetune") is None
    assert table.price_for(None) is None
    assert total.usd is None
    assert total.known_usd == pytest.approx(3.0)
    assert total.unpriced == {"my-finetune": 3}
    assert describe_cost(total).startswith("$3.00 + unknown (no price for my-finetune")
    assert describe_cost(cost_of(tokens[1:], table)).startswith("unknown")
    assert format_usd(None) == "unknown"


def test_cost_counts_every_kind_of_token_at_its_own_price() -> None:
    price = PriceTable().price_for("claude-3-haiku-20240307")
    assert price is not None

    usd = price.cost_usd(
        input_tokens=1_000_000,
        output_tokens=2_000_000,
        cache_creation_input_tokens=4_000_000,
        cache_read_input_tokens=10_000_000,
    )

    assert usd == pytest.approx(0.25 + 2 * 1.25 + 4 * 0.30 + 10 * 0.03)


def test_cost_totals_add_up_and_keep_the_unpriced_models() -> None:
    total = CostTotal(1.0, {"a": 1}) + CostTotal(2.0, {"a": 2, "b": 1}) + CostTotal(0.5)

    assert total.known_usd == 3.5
    assert total.unpriced == {"a": 3, "b": 1}


def test_amounts_show_cents_above_a_dollar_and_more_digits_below() -> None:
    assert format_usd(1234.5) == "$1,234.50"
    assert format_usd(0.01234) == "$0.0123"
    assert format_usd(0.0) == "$0.00"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "batchrun.toml"
    path.write_text(text)
    return path


def test_the_config_file_overrides_a_price_and_adds_a_model(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            '[prices."claude-sonnet-4-5"]\ninput = 2.5\noutput = 12\n'
            "cache_write = 3\ncache_read = 0.2\n\n"
            '[prices."my-finetune"]\ninput = 1\noutput = 4\n',
        )
    )
    table = PriceTable.with_overrides(settings.prices)

    assert table.price_for("claude-sonnet-4-5-20250929") == ModelPrice(2.5, 12.0, 3.0, 0.2)
    # Cache prices left out follow Anthropic's multipliers of the input price.
    assert table.price_for("my-finetune") == ModelPrice(1.0, 4.0, 1.25, 0.1)
    # The rest of the built-in table stays.
    assert table.price_for("claude-3-haiku-20240307") == DEFAULT_PRICES["claude-3-haiku"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[prices."m"]\ninput = -1\noutput = 2\n', "prices.m.input: must be at least 0"),
        ('[prices."m"]\ninput = "3"\noutput = 2\n', "prices.m.input: must be a number"),
        (
            '[prices."m"]\ninput = 1\nouptut = 2\n',
            'prices.m.ouptut: unknown key; did you mean "output"?',
        ),
        ('[prices."m"]\ninput = 1\n', "prices.m.output: required"),
    ],
)
def test_a_bad_price_is_one_line_naming_the_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert f"{path}: {message}" in caught.value.message


def test_a_cache_writes_one_hour_part_costs_twice_the_input_price_the_rest_1_25() -> None:
    price = ModelPrice.standard(3.0, 15.0)

    usd = price.cost_usd(
        cache_creation_input_tokens=4_000_000, cache_creation_1h_input_tokens=1_000_000
    )

    assert usd == pytest.approx(3 * 3.75 + 1 * 6.0)
    # The 1-hour part is at most the whole write.
    assert price.cost_usd(
        cache_creation_input_tokens=1_000_000, cache_creation_1h_input_tokens=5_000_000
    ) == pytest.approx(6.0)
    tokens = ModelTokens(
        "claude-sonnet-4-5",
        1,
        0,
        0,
        2_000_000,
        0,
        cost_factor=0.5,
        cache_creation_1h_input_tokens=2_000_000,
    )
    assert cost_of([tokens], PriceTable()).usd == pytest.approx(0.5 * 2 * 6.0)


def test_priming_is_the_one_hour_premium_shown_beside_the_refreshes_not_added() -> None:
    leader_writes = 2_000_000
    refresh = Usage(1_000_000, 0, 0, 0)
    refreshes = CacheRefreshTotals(
        (
            CacheRefreshModel(
                "claude-sonnet-4-5", 1, 1, 0, refresh, leader_write_1h_tokens=leader_writes
            ),
        )
    )

    accounting = cache_accounting([], refreshes, PriceTable())

    assert accounting.priming_usd == pytest.approx(2 * (6.0 - 3.75))
    assert accounting.refresh_usd == pytest.approx(3.0)
    assert accounting.overhead_usd == pytest.approx(3.0)
