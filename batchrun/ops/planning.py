"""Plan before spending: what a request file will cost and how long its endpoint's limits
make it take. Nothing is stored and nothing is sent.

Per model (the limiter paces each endpoint × model on its own, so models run side by side):

- input tokens: batchrun's own estimate (:func:`batchrun.input.estimate.estimate_input_tokens`,
  about 3.5 characters per token plus images), the one ``submit`` stores;
- output tokens: the worst case is the sum of ``max_tokens``; the expected case assumes
  replies use ``output_share`` of it (30 % unless told otherwise);
- cost: both cases at the model's price (unknown without a price); for the batch lane,
  with prompt-cache groups (requests sharing a ``cache_control`` prefix, two or more), also
  under each cache TTL policy (``--cache-ttl auto`` and ``keep``): the groups' prefix
  tokens, counted as plain input in the lane's figure, are priced instead by
  :func:`~batchrun.config.prices.group_prefix_cost_usd`;
- duration: for each limit in force, the file's measure in that dimension divided by the
  limit (:mod:`batchrun.limits.dimensions`): requests / rpm, input tokens / itpm, output
  tokens / otpm, input + output / tpm. The slowest is the limit that
  binds. The file takes as long as its slowest model.

Limits across all the models of the endpoint (``endpoint_limits``, ``--endpoint-*``) pace the
whole file as one: it is planned once more as a single model named
:data:`~batchrun.limits.families.ALL_MODELS`, against those limits, and takes at least that
long. Every request takes from both scopes, so the file's duration is the longer of the two
(the slowest model, the whole file at the endpoint's limits): exact when one scope binds
throughout, a lower bound when they take turns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO

from batchrun.batch_lane.auto import auto_lane
from batchrun.config.prices import ModelPrice, PriceTable, group_prefix_cost_usd
from batchrun.errors import InputFileError
from batchrun.limits.dimensions import DIMENSIONS, Amounts, RateLimits
from batchrun.limits.families import ALL_MODELS
from batchrun.records import CacheTtl, Lane
from batchrun.transport.endpoints import PROVIDER_BATCH_LIFETIME_S, BatchApi

if TYPE_CHECKING:
    from batchrun.input.reader import ReadItem
    from batchrun.input.validation import InvalidLine
    from batchrun.transport.endpoints import Endpoint

# Share of max_tokens a reply is assumed to use in the expected case.
DEFAULT_OUTPUT_SHARE = 0.3
# With skip_invalid: the problems of invalid lines a plan names (file:line), at most.
INVALID_PROBLEMS_SHOWN = 5


@dataclass
class ModelPlan:
    """The requests of one model in a file, and what they will take."""

    model: str
    requests: int = 0
    input_tokens: int = 0
    max_output_tokens: int = 0
    output_share: float = DEFAULT_OUTPUT_SHARE
    price: ModelPrice | None = None
    limits: RateLimits | None = None
    # Prompt-cache groups: prefix key → [requests, estimated prefix tokens].
    cache_groups: dict[str, list[int]] = field(default_factory=dict)

    def grouped(self) -> list[tuple[int, int]]:
        """(requests, prefix tokens) of each group of two or more requests."""
        return [(n, tokens) for n, tokens in self.cache_groups.values() if n >= 2]

    def prefix_costs_usd(self, discount: float) -> dict[str, float] | None:
        """The groups' prefix cost in the batch lane: as the lane's plain figure counts it
        (``plain``: input price × discount for every request), and under each cache TTL
        policy (``auto``, ``keep``); None without a price."""
        price = self.price
        if price is None:
            return None
        costs = {"plain": 0.0, CacheTtl.AUTO.value: 0.0, CacheTtl.KEEP.value: 0.0}
        for n, tokens in self.grouped():
            costs["plain"] += n * tokens * price.input_per_mtok_usd * discount / 1_000_000
            for policy in (CacheTtl.AUTO, CacheTtl.KEEP):
                costs[policy.value] += group_prefix_cost_usd(
                    price,
                    prefix_tokens=tokens,
                    requests=n,
                    discount=discount,
                    one_hour=policy == CacheTtl.AUTO,
                )
        return costs

    @property
    def expected_output_tokens(self) -> int:
        return math.ceil(self.max_output_tokens * self.output_share)

    def cost_usd(self, output_tokens: int) -> float | None:
        """The cost with this many output tokens, or None without a price."""
        if self.price is None:
            return None
        return self.price.cost_usd(input_tokens=self.input_tokens, output_tokens=output_tokens)

    def minutes_by_limit(self, output_tokens: int) -> dict[str, float]:
        """Minutes each limit in force needs for these requests, by limit name."""
        limits = self.limits or RateLimits()
        amounts = Amounts(float(self.requests), float(self.input_tokens), float(output_tokens))
        return {
            dimension.name: dimension.measure(amounts) / limit
            for dimension in DIMENSIONS
            if (limit := limits.get(dimension.name)) is not None
        }

    def duration(self, output_tokens: int) -> tuple[float | None, str | None]:
        """(minutes, the limit that binds), or (None, None) when no limit applies."""
        minutes = self.minutes_by_limit(output_tokens)
        if not minutes:
            return None, None
        binding = max(minutes, key=lambda dimension: minutes[dimension])
        return minutes[binding], binding


@dataclass
class FilePlan:
    """A whole file: its models, and the totals; with a batch API, the batch lane's terms
    and the lane ``lane`` would use (``chosen``)."""

    source: str
    endpoint: str
    output_share: float
    models: list[ModelPlan]
    batch_api: BatchApi | None = None
    lane: str = Lane.REALTIME
    chosen: str = Lane.REALTIME
    # With skip_invalid: the invalid lines left out of the plan, and the first problems
    # (``file:line: problem``, then "… and N more problems").
    invalid_lines: int = 0
    invalid_problems: tuple[str, ...] = ()
    # The endpoint's limits across all its models, when it has any.
    endpoint_limits: RateLimits | None = None

    def with_lanes(self, batch_api: BatchApi | None, *, lane: str, deadline_s: float) -> FilePlan:
        """This plan with the batch lane's terms, and the lane ``lane`` takes (for ``auto``:
        its choice for a deadline ``deadline_s`` away, by the expected duration)."""
        chosen = lane
        if lane == Lane.AUTO and batch_api is not None:
            now = datetime.now(UTC)
            minutes, _ = self.duration(worst=False)
            chosen, _ = auto_lane(
                now=now,
                deadline=now + timedelta(seconds=deadline_s),
                realtime_s=None if minutes is None else minutes * 60,
                typical_s=batch_api.typical_s,
                poll_interval_s=0.0,
            )
        return replace(self, batch_api=batch_api, lane=lane, chosen=chosen)

    @property
    def requests(self) -> int:
        return sum(m.requests for m in self.models)

    @property
    def input_tokens(self) -> int:
        return sum(m.input_tokens for m in self.models)

    @property
    def max_output_tokens(self) -> int:
        return sum(m.max_output_tokens for m in self.models)

    @property
    def expected_output_tokens(self) -> int:
        return sum(m.expected_output_tokens for m in self.models)

    def cost_usd(self, *, worst: bool) -> tuple[float, list[str]]:
        """The total cost of the priced models, and the models without a price."""
        known, unpriced = 0.0, []
        for m in self.models:
            cost = m.cost_usd(m.max_output_tokens if worst else m.expected_output_tokens)
            if cost is None:
                unpriced.append(m.model)
            else:
                known += cost
        return known, unpriced

    def cache_ttl_costs_usd(self, *, worst: bool) -> dict[str, float] | None:
        """The batch lane's cost under each cache TTL policy (``auto``, ``keep``), when the
        file has prompt-cache groups, a batch API and every model a price; else None."""
        api = self.batch_api
        if api is None or not any(m.grouped() for m in self.models):
            return None
        total, unpriced = self.cost_usd(worst=worst)
        if unpriced:
            return None
        lane_usd = total * api.discount
        costs = {CacheTtl.AUTO.value: lane_usd, CacheTtl.KEEP.value: lane_usd}
        for m in self.models:
            prefix = m.prefix_costs_usd(api.discount)
            if prefix is None:
                continue
            for policy in costs:
                costs[policy] += prefix[policy] - prefix["plain"]
        return costs

    def cache_groups(self) -> tuple[int, int, int]:
        """(groups of two or more, their requests, their prefix tokens in all)."""
        groups = [group for m in self.models for group in m.grouped()]
        return len(groups), sum(n for n, _ in groups), sum(n * t for n, t in groups)

    def whole(self) -> ModelPlan | None:
        """The whole file as one model named :data:`ALL_MODELS`, paced by the endpoint's
        limits across all its models; None when it has none."""
        if not self.endpoint_limits:
            return None
        return ModelPlan(
            ALL_MODELS,
            requests=self.requests,
            input_tokens=self.input_tokens,
            max_output_tokens=self.max_output_tokens,
            output_share=self.output_share,
            limits=self.endpoint_limits,
        )

    def duration(self, *, worst: bool) -> tuple[float | None, ModelPlan | None]:
        """Minutes for the whole file and what sets them: its slowest model, or
        :meth:`whole` when the endpoint's limits across all models take longer. (None,
        None) when neither scope sets a pace: a model has no limit of its own and the
        endpoint none across its models."""
        slowest: tuple[float, ModelPlan] | None = None
        unpaced = False
        whole = self.whole()
        for m in [*self.models, *([whole] if whole is not None else [])]:
            minutes, _ = m.duration(m.max_output_tokens if worst else m.expected_output_tokens)
            if minutes is None:
                unpaced = True
            elif slowest is None or minutes > slowest[0]:
                slowest = (minutes, m)
        if slowest is None or (unpaced and whole is None):
            return None, None
        return slowest


def plan_file(
    stream: BinaryIO,
    *,
    source: str,
    endpoint: Endpoint,
    prices: PriceTable,
    overrides: RateLimits | None = None,
    endpoint_overrides: RateLimits | None = None,
    output_share: float = DEFAULT_OUTPUT_SHARE,
    default_model: str | None = None,
    max_requests: int | None = None,
    max_file_bytes: int | None = None,
    skip_invalid: bool = False,
) -> FilePlan:
    """Read and check a request file the way ``submit`` does, and plan it for ``endpoint``.

    ``overrides`` replace limits per model (the ``--rpm`` ... flags), ``endpoint_overrides``
    the endpoint's limits across all its models (``--endpoint-rpm`` ...).

    Raises InputFileError listing the problems (file:line) if any line is invalid; with
    ``skip_invalid`` (as ``submit --skip-invalid`` stores them: errored, never sent) the
    valid lines are planned and the invalid ones counted, the first
    :data:`INVALID_PROBLEMS_SHOWN` problems named. A problem with the whole file (no
    requests, over a cap) refuses it either way.
    """
    # The reader and its checks load only when a file is planned (not for `--help`).
    from batchrun.input.reader import read_requests

    sizes = {
        key: value
        for key, value in (("max_requests", max_requests), ("max_file_bytes", max_file_bytes))
        if value is not None
    }
    return plan_items(
        read_requests(stream, source=source, default_model=default_model, **sizes),
        source=source,
        endpoint=endpoint,
        prices=prices,
        overrides=overrides,
        endpoint_overrides=endpoint_overrides,
        output_share=output_share,
        skip_invalid=skip_invalid,
    )


def plan_items(
    items: Iterable[ReadItem],
    *,
    source: str,
    endpoint: Endpoint,
    prices: PriceTable,
    overrides: RateLimits | None = None,
    endpoint_overrides: RateLimits | None = None,
    output_share: float = DEFAULT_OUTPUT_SHARE,
    skip_invalid: bool = False,
    locate: Callable[[int], str] | None = None,
) -> FilePlan:
    """Plan checked requests as :func:`plan_file` does, from the items a reader yields: a
    request file's lines, or a table's rows rendered by a template
    (:func:`batchrun.input.table_ingest.table_items`). ``locate`` names where an item is in
    messages (default ``source:line``; a table's ``source:row N``). Raises and counts as
    :func:`plan_file` does."""
    from batchrun.input.digests import cache_prefix_key
    from batchrun.input.estimate import estimate_input_tokens, estimate_prefix_tokens
    from batchrun.input.reader import MAX_PRINTED_PROBLEMS, FileProblem, format_problems
    from batchrun.input.validation import InvalidLine

    limits_override = overrides or RateLimits()
    models: dict[str, ModelPlan] = {}
    problems: list[InvalidLine | FileProblem] = []
    hidden = 0
    where = locate or (lambda line_no: f"{source}:{line_no}")
    skipped = _Skipped(where)
    for _, item in items:
        if skip_invalid and isinstance(item, InvalidLine):
            skipped.add(item)
            continue
        if isinstance(item, InvalidLine | FileProblem):
            if len(problems) < MAX_PRINTED_PROBLEMS:
                problems.append(item)
            else:
                hidden += 1
            continue
        plan = models.get(item.model)
        if plan is None:
            base = endpoint.limits_for(item.model) or RateLimits()
            plan = models[item.model] = ModelPlan(
                item.model,
                output_share=output_share,
                price=prices.price_for(item.model),
                limits=limits_override.merged_over(base),
            )
        plan.requests += 1
        plan.input_tokens += estimate_input_tokens(item.params)
        plan.max_output_tokens += item.max_tokens
        prefix = cache_prefix_key(item.params_json, item.params)
        if prefix is not None:
            group = plan.cache_groups.get(prefix)
            if group is None:
                plan.cache_groups[prefix] = [1, estimate_prefix_tokens(item.params)]
            else:
                group[0] += 1
    if problems:
        lines = format_problems(problems, source=source, locate=locate)
        listed = format_problems(
            [item for item in problems if isinstance(item, InvalidLine)],
            source=source,
            locate=locate,
        )
        if hidden:
            lines.append(f"… and {hidden:,} more invalid lines")
        if not hidden and all(isinstance(item, FileProblem) for item in problems):
            # The file alone (empty, say): one line, with no lines "above" to fix.
            raise InputFileError(f"{'; '.join(lines)}; nothing was estimated")
        lines.append("nothing was estimated; fix the lines above and try again")
        raise InputFileError("\n".join(lines), problems=listed)
    ordered = sorted(models.values(), key=lambda m: (-m.requests, m.model))
    endpoint_limits = (endpoint_overrides or RateLimits()).merged_over(endpoint.endpoint_limits)
    return FilePlan(
        source,
        endpoint.name,
        output_share,
        ordered,
        invalid_lines=skipped.lines,
        invalid_problems=skipped.named(),
        endpoint_limits=endpoint_limits or None,
    )


class _Skipped:
    """The invalid lines a plan leaves out: how many, and their first problems by name."""

    def __init__(self, where: Callable[[int], str]) -> None:
        self.where = where
        self.lines = 0
        self.shown: list[str] = []
        self.hidden = 0

    def add(self, item: InvalidLine) -> None:
        """Count an invalid line and keep its problems while few."""
        self.lines += 1
        for problem in item.problems:
            if len(self.shown) < INVALID_PROBLEMS_SHOWN:
                self.shown.append(f"{self.where(item.line_no)}: {problem}")
            else:
                self.hidden += 1

    def named(self) -> tuple[str, ...]:
        more = self.hidden
        tail = [f"… and {more:,} more problem{'s' if more != 1 else ''}"] if more else []
        return (*self.shown, *tail)


def _minutes_json(plan: ModelPlan, output: int) -> dict[str, Any]:
    minutes, binding = plan.duration(output)
    return {
        "minutes": None if minutes is None else round(minutes, 3),
        "binding_limit": binding,
        "minutes_by_limit": {k: round(v, 3) for k, v in plan.minutes_by_limit(output).items()},
    }


def plan_json(plan: FilePlan) -> dict[str, Any]:
    """The estimate as data: per model and in total, expected and worst case."""
    models = []
    for m in plan.models:
        expected_cost = m.cost_usd(m.expected_output_tokens)
        worst_cost = m.cost_usd(m.max_output_tokens)
        models.append(
            {
                "model": m.model,
                "requests": m.requests,
                "input_tokens": m.input_tokens,
                "expected_output_tokens": m.expected_output_tokens,
                "max_output_tokens": m.max_output_tokens,
                "expected_cost_usd": None if expected_cost is None else round(expected_cost, 8),
                "worst_cost_usd": None if worst_cost is None else round(worst_cost, 8),
                "limits": None if m.limits is None else m.limits.as_json(),
                "expected_duration": _minutes_json(m, m.expected_output_tokens),
                "worst_duration": _minutes_json(m, m.max_output_tokens),
            }
        )
    expected, unpriced = plan.cost_usd(worst=False)
    worst, _ = plan.cost_usd(worst=True)
    durations = {}
    for case, is_worst in (("expected", False), ("worst", True)):
        minutes, slowest = plan.duration(worst=is_worst)
        durations[case] = {
            "minutes": None if minutes is None else round(minutes, 3),
            # ALL_MODELS when the endpoint's limits across all its models bind.
            "slowest_model": slowest.model if slowest else None,
        }
    whole = plan.whole()
    return {
        "source": plan.source,
        "endpoint": plan.endpoint,
        "output_share": plan.output_share,
        "requests": plan.requests,
        "input_tokens": plan.input_tokens,
        "expected_output_tokens": plan.expected_output_tokens,
        "max_output_tokens": plan.max_output_tokens,
        "expected_cost_usd": None if unpriced else round(expected, 8),
        "worst_cost_usd": None if unpriced else round(worst, 8),
        "unpriced_models": unpriced,
        "duration": durations,
        "models": models,
        "endpoint_limits": None if plan.endpoint_limits is None else plan.endpoint_limits.as_json(),
        "endpoint_duration": None
        if whole is None
        else {
            "expected": _minutes_json(whole, whole.expected_output_tokens),
            "worst": _minutes_json(whole, whole.max_output_tokens),
        },
        "lanes": _lanes_json(plan, expected, worst, unpriced),
        "lane": plan.lane,
        "chosen_lane": plan.chosen,
        "invalid_lines": plan.invalid_lines,
        "invalid_problems": list(plan.invalid_problems),
    }


def _lanes_json(
    plan: FilePlan, expected: float, worst: float, unpriced: list[str]
) -> dict[str, Any]:
    """Cost and time of each lane the endpoint offers."""
    minutes, _ = plan.duration(worst=False)
    # Plain-str keys (.value): orjson refuses a str subclass as a key.
    lanes: dict[str, Any] = {
        Lane.REALTIME.value: {
            "expected_cost_usd": None if unpriced else round(expected, 8),
            "worst_cost_usd": None if unpriced else round(worst, 8),
            "expected_minutes": None if minutes is None else round(minutes, 3),
        }
    }
    api = plan.batch_api
    if api is not None:
        lanes[Lane.BATCH.value] = {
            "expected_cost_usd": None if unpriced else round(expected * api.discount, 8),
            "worst_cost_usd": None if unpriced else round(worst * api.discount, 8),
            "saved_usd": None if unpriced else round(expected * (1 - api.discount), 8),
            "discount": api.discount,
            "typical_minutes": round(api.typical_s / 60, 3),
            "at_most_minutes": round(PROVIDER_BATCH_LIFETIME_S / 60, 3),
            "cache_ttl": _cache_ttl_json(plan),
        }
    return lanes


def _cache_ttl_json(plan: FilePlan) -> dict[str, Any] | None:
    """The batch lane's cost under each cache TTL policy, when the file has cache groups."""
    groups, requests, prefix_tokens = plan.cache_groups()
    if not groups:
        return None
    expected = plan.cache_ttl_costs_usd(worst=False)
    worst = plan.cache_ttl_costs_usd(worst=True)
    return {
        "groups": groups,
        "requests": requests,
        "prefix_tokens": prefix_tokens,
        "expected_cost_usd": None
        if expected is None
        else {policy: round(usd, 8) for policy, usd in expected.items()},
        "worst_cost_usd": None
        if worst is None
        else {policy: round(usd, 8) for policy, usd in worst.items()},
    }
