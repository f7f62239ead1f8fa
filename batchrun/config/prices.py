"""What requests cost: a price table per model, and costs derived from stored token usage.

Each result also keeps the share of the list price its lane bills (``cost_factor``: the
batch API's discount, 0 for an answer reused from the database), so costs are known per
lane, with what the discounts saved.

Cost is never stored: it is derived from the token counts each result keeps (input, output,
cache write, cache read), at status, export and budget time, so a corrected price table
re-prices everything at once. A model without a price has an *unknown* cost, shown as
unknown and never counted as 0.

Prices are USD per million tokens. ``cache_write`` is the price of the 5-minute cache write;
the 1-hour write costs :data:`ONE_HOUR_WRITE_MULTIPLIER` × the input price. The API's usage
says how much of ``cache_creation_input_tokens`` went to the 1-hour cache
(``cache_creation.ephemeral_1h_input_tokens``, kept as ``cache_creation_1h_input_tokens``):
that part is priced at the 1-hour price, the rest at the 5-minute one.

:func:`group_prefix_cost_usd` is the cost of one prompt-cache group's shared prefix in the
batch lane under each cache TTL policy (``--cache-ttl``), the formula "Paying less" in the
docs writes out: with ``keep`` the leader writes the prefix at the 5-minute price in real
time and, the batch running cold, every follower writes it again at the batch discount; with
``auto`` the leader writes it once at the 1-hour price (:data:`ONE_HOUR_WRITE_MULTIPLIER` ×
input) and every follower reads it at the discount.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from batchrun.records import CacheRefreshTotals, ModelTokens, Usage

TOKENS_PER_MTOK = 1_000_000
# Anthropic's prompt-caching multipliers of the input price, used when the config file gives
# a model's input price but not its cache prices.
CACHE_WRITE_MULTIPLIER = 1.25
CACHE_READ_MULTIPLIER = 0.1
# Anthropic's price of a 1-hour cache write: twice the input price, for every model.
ONE_HOUR_WRITE_MULTIPLIER = 2.0
# "claude-3-haiku-20240307" and "claude-3-5-sonnet-latest" are priced as their family.
_VERSION_SUFFIX = re.compile(r"-(\d{8}|latest)$")


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens of one model."""

    input_per_mtok_usd: float
    output_per_mtok_usd: float
    cache_write_per_mtok_usd: float
    cache_read_per_mtok_usd: float

    @classmethod
    def standard(cls, input_usd: float, output_usd: float) -> ModelPrice:
        """A price with Anthropic's usual cache multipliers of the input price."""
        return cls(
            input_usd,
            output_usd,
            input_usd * CACHE_WRITE_MULTIPLIER,
            input_usd * CACHE_READ_MULTIPLIER,
        )

    def cost_usd(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_creation_input_tokens: int = 0,
        cache_read_input_tokens: int = 0,
        cache_creation_1h_input_tokens: int = 0,
    ) -> float:
        """The cost of these tokens: of the cache write (``cache_creation_input_tokens``), the
        1-hour part (``cache_creation_1h_input_tokens``, at most the whole) at the 1-hour
        write price, the rest at the 5-minute one."""
        one_hour = min(max(cache_creation_1h_input_tokens, 0), cache_creation_input_tokens)
        return (
            input_tokens * self.input_per_mtok_usd
            + output_tokens * self.output_per_mtok_usd
            + (cache_creation_input_tokens - one_hour) * self.cache_write_per_mtok_usd
            + one_hour * self.cache_write_1h_per_mtok_usd
            + cache_read_input_tokens * self.cache_read_per_mtok_usd
        ) / TOKENS_PER_MTOK

    def usage_cost_usd(self, usage: Usage) -> float:
        """The cost of one answer's (or a sum of answers') ``usage``: :meth:`cost_usd`."""
        return self.cost_usd(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            cache_creation_1h_input_tokens=usage.cache_creation_1h_input_tokens,
        )

    @property
    def cache_write_1h_per_mtok_usd(self) -> float:
        """The price of a 1-hour cache write: :data:`ONE_HOUR_WRITE_MULTIPLIER` × input."""
        return self.input_per_mtok_usd * ONE_HOUR_WRITE_MULTIPLIER

    @property
    def one_hour_premium_per_mtok_usd(self) -> float:
        """What a 1-hour cache write costs beyond a 5-minute one."""
        return self.cache_write_1h_per_mtok_usd - self.cache_write_per_mtok_usd


def group_prefix_cost_usd(
    price: ModelPrice, *, prefix_tokens: int, requests: int, discount: float, one_hour: bool
) -> float:
    """The cost of the shared prefix of one prompt-cache group of ``requests`` requests (the
    leader in real time, the others in a provider batch billed at ``discount`` of the list
    price), as the module docstring says: ``one_hour`` for ``--cache-ttl auto``, else
    ``keep`` with a cold batch."""
    followers = max(requests - 1, 0)
    if one_hour:
        leader_per_mtok = price.cache_write_1h_per_mtok_usd
        follower_per_mtok = price.cache_read_per_mtok_usd * discount
    else:
        leader_per_mtok = price.cache_write_per_mtok_usd
        follower_per_mtok = price.cache_write_per_mtok_usd * discount
    per_mtok = leader_per_mtok + followers * follower_per_mtok
    return prefix_tokens * per_mtok / TOKENS_PER_MTOK


def _same(price: ModelPrice, *models: str) -> dict[str, ModelPrice]:
    return dict.fromkeys(models, price)


# Anthropic's list prices for the Messages API (not the 50 % Batch API rates), from
# https://platform.claude.com/docs/en/about-claude/pricing ("Model pricing") and the
# models' overview pages under https://platform.claude.com/docs/en/models/, read on
# 2026-11-22. Claude 3 Sonnet is retired and no longer on that page: its $3 / $15 are from
# https://www.anthropic.com/news/claude-3-family (March 2024), its cache prices at the
# standard multipliers. Left out on purpose: Claude Haiku 5.5, priced by prompt length
# (two bands), which one price per model cannot express; set it in the config file.
# Sonnet 5.5's cache read is its overview page's $0.20; a cut to $0.10 from 2026-10-07 is
# reported by third parties but was not found on an Anthropic page. Prices change: the
# config file's [prices."MODEL"] tables override these.
DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    **_same(ModelPrice(10.0, 50.0, 12.5, 0.25), "claude-fable-5-1", "claude-mythos-5-1"),
    **_same(ModelPrice(10.0, 50.0, 12.5, 1.0), "claude-fable-5", "claude-mythos-5"),
    "claude-opus-5-5": ModelPrice(4.0, 20.0, 5.0, 0.2),
    **_same(
        ModelPrice(5.0, 25.0, 6.25, 0.5),
        "claude-opus-5",
        "claude-opus-4-8",
        "claude-opus-4-7",
        "claude-opus-4-6",
        "claude-opus-4-5",
    ),
    **_same(
        ModelPrice(15.0, 75.0, 18.75, 1.5),
        "claude-opus-4-1",
        "claude-opus-4-0",
        "claude-opus-4",
        "claude-3-opus",
    ),
    **_same(ModelPrice(2.0, 10.0, 2.5, 0.2), "claude-sonnet-5-5", "claude-sonnet-5"),
    **_same(
        ModelPrice(3.0, 15.0, 3.75, 0.3),
        "claude-sonnet-4-6",
        "claude-sonnet-4-5",
        "claude-sonnet-4-0",
        "claude-sonnet-4",
        "claude-3-7-sonnet",
        "claude-3-5-sonnet",
        "claude-3-sonnet",
    ),
    "claude-haiku-4-5": ModelPrice(1.0, 5.0, 1.25, 0.1),
    "claude-3-5-haiku": ModelPrice(0.8, 4.0, 1.0, 0.08),
    "claude-3-haiku": ModelPrice(0.25, 1.25, 0.3, 0.03),
}


def model_family(model: str) -> str:
    """The model name without a date or ``-latest`` suffix."""
    return _VERSION_SUFFIX.sub("", model)


@dataclass(frozen=True)
class PriceTable:
    """Prices per model: the built-in ones, overridden model by model by the config file."""

    prices: Mapping[str, ModelPrice] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, ModelPrice]) -> PriceTable:
        """The built-in prices with ``overrides`` (from the config file) on top."""
        return cls({**DEFAULT_PRICES, **overrides})

    def price_for(self, model: str | None) -> ModelPrice | None:
        """The price of ``model``: its own entry, else its family's (the name without a date
        suffix); None when unknown."""
        if not model:
            return None
        found = self.prices.get(model)
        if found is None:
            found = self.prices.get(model_family(model))
        return found


@dataclass(frozen=True)
class CostTotal:
    """A sum of costs: what could be priced, and the models that could not (model → number of
    requests), whose cost is unknown; the priced part per lane, and what it would have cost
    at the list price (real time, nothing reused)."""

    known_usd: float = 0.0
    unpriced: Mapping[str, int] = field(default_factory=dict)
    by_lane: Mapping[str, float] = field(default_factory=dict)
    list_usd: float = 0.0

    @property
    def usd(self) -> float | None:
        """The total, or None when part of it is unknown."""
        return None if self.unpriced else self.known_usd

    @property
    def saved_usd(self) -> float:
        """What the batch discount and reused answers saved against the list price."""
        return max(self.list_usd - self.known_usd, 0.0)

    def __add__(self, other: CostTotal) -> CostTotal:
        unpriced = dict(self.unpriced)
        for model, count in other.unpriced.items():
            unpriced[model] = unpriced.get(model, 0) + count
        by_lane = dict(self.by_lane)
        for lane, usd in other.by_lane.items():
            by_lane[lane] = by_lane.get(lane, 0.0) + usd
        return CostTotal(
            self.known_usd + other.known_usd, unpriced, by_lane, self.list_usd + other.list_usd
        )


def cost_of(tokens: Iterable[ModelTokens], prices: PriceTable) -> CostTotal:
    """The cost of token totals per model."""
    total = CostTotal()
    for item in tokens:
        price = prices.price_for(item.model)
        if price is None:
            if item.input_tokens or item.output_tokens or item.requests:
                total = total + CostTotal(0.0, {item.model: max(item.requests, 1)})
            continue
        list_usd = price.cost_usd(
            input_tokens=item.input_tokens,
            output_tokens=item.output_tokens,
            cache_creation_input_tokens=item.cache_creation_input_tokens,
            cache_read_input_tokens=item.cache_read_input_tokens,
            cache_creation_1h_input_tokens=item.cache_creation_1h_input_tokens,
        )
        usd = list_usd * item.cost_factor
        # str(): a plain str key even for a Lane member (orjson refuses str subclasses as keys).
        total = total + CostTotal(usd, by_lane={str(item.lane): usd}, list_usd=list_usd)
    return total


@dataclass(frozen=True)
class LaneCache:
    """One lane's prompt-cache tokens, and what the reads saved against writing every
    prefix instead (reads × (write price − read price), at the lane's share of the price)."""

    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    saved_usd: float = 0.0


@dataclass(frozen=True)
class CacheAccounting:
    """A batch's prompt cache per lane, and the overhead of keeping its groups warm (the
    batch lane's refresh requests, sent in real time at the list price)."""

    by_lane: Mapping[str, LaneCache] = field(default_factory=dict)
    refreshes: int = 0
    refreshes_failed: int = 0
    refreshed_groups: int = 0
    # The refreshes' cost, and the leaders' 1-hour writes' premium over the 5-minute price
    # (priming: part of the leaders' results' cost, which prices their writes at the 1-hour
    # price); None when a model has no price.
    refresh_usd: float | None = 0.0
    priming_usd: float | None = 0.0

    @property
    def overhead_usd(self) -> float | None:
        """What keeping the groups warm cost beyond the results: the refreshes. The priming
        is shown beside it but not added: the results' cost holds it already."""
        return self.refresh_usd


def cache_saved_usd(price: ModelPrice, cache_read_input_tokens: int, cost_factor: float) -> float:
    """What cache reads saved against writing those prefixes instead (5-minute write price
    less read price), at the lane's share of the list price."""
    per_mtok = price.cache_write_per_mtok_usd - price.cache_read_per_mtok_usd
    return cache_read_input_tokens * per_mtok / TOKENS_PER_MTOK * cost_factor


def cache_accounting(
    tokens: Iterable[ModelTokens], refreshes: CacheRefreshTotals, prices: PriceTable
) -> CacheAccounting:
    """The cache accounting of a batch from its token totals per model × lane (the stored
    counters) and its refresh totals (one row per group)."""
    lanes: dict[str, LaneCache] = {}
    for item in tokens:
        price = prices.price_for(item.model)
        saved = 0.0
        if price is not None:
            saved = cache_saved_usd(price, item.cache_read_input_tokens, item.cost_factor)
        lane = str(item.lane)
        before = lanes.get(lane, LaneCache())
        lanes[lane] = LaneCache(
            before.cache_read_input_tokens + item.cache_read_input_tokens,
            before.cache_creation_input_tokens + item.cache_creation_input_tokens,
            before.saved_usd + saved,
        )
    refresh: float | None = 0.0
    priming: float | None = 0.0
    for model in refreshes.models:
        price = prices.price_for(model.model)
        if price is None or refresh is None or priming is None:
            refresh = priming = None
            continue
        refresh += price.usage_cost_usd(model.usage)
        premium = price.one_hour_premium_per_mtok_usd
        priming += model.leader_write_1h_tokens * premium / TOKENS_PER_MTOK
    return CacheAccounting(
        by_lane={lane: lanes[lane] for lane in sorted(lanes)},
        refreshes=refreshes.refreshes,
        refreshes_failed=sum(m.failed for m in refreshes.models),
        refreshed_groups=sum(m.groups for m in refreshes.models),
        refresh_usd=refresh,
        priming_usd=priming,
    )


def format_usd(value: float | None) -> str:
    """A dollar amount for people: cents above $1, more digits below; "unknown" for None."""
    if value is None:
        return "unknown"
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    return f"${value:.4f}"


def describe_cost(total: CostTotal) -> str:
    """A cost for people, saying which models have no price instead of counting them as 0."""
    if not total.unpriced:
        return format_usd(total.known_usd)
    models = ", ".join(sorted(total.unpriced))
    where = 'add [prices."MODEL"] to the config file'
    if total.known_usd > 0:
        return f"{format_usd(total.known_usd)} + unknown (no price for {models}; {where})"
    return f"unknown (no price for {models}; {where})"
