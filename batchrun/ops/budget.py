"""Budgets: no request is sent that could take its batch's cost past ``max_cost_usd``.

Before each send the guard compares the batch's cost so far, plus what the requests in flight
may still cost, plus this request's worst case, with the budget. The worst case of a request
is its calibrated input estimate at the input price plus its ``max_tokens`` at the output
price. A request that does not fit stops the batch (the dispatcher pauses it, with the reason
this module words); the batch stays resumable: raise the budget and run it again.

The cost so far starts from the results in the database and grows with every answer this
worker receives. With several workers (Postgres), :meth:`BudgetGuard.refresh` re-reads the
database now and then, so each worker also counts what the others spent; until then a worker
may under-count their spending by what they spent since its last refresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchrun.config.prices import CostTotal, PriceTable, format_usd
from batchrun.errors import UnpricedModelsError
from batchrun.records import Succeeded, Usage

if TYPE_CHECKING:
    from batchrun.transport.endpoints import Endpoints

# The flag (and, from Python, the argument) that holds only the unpriced requests of a batch
# with a budget, instead of refusing the budget.
HOLD_UNPRICED_FLAG = "--hold-unpriced"


def unpriced_models(models: Iterable[str], prices: PriceTable) -> list[str]:
    """The models of ``models`` that have no price (so a budget cannot count what their
    requests cost), sorted; the same rule as ``estimate``'s (:meth:`PriceTable.price_for`)."""
    return sorted({model for model in models if prices.price_for(model) is None})


def price_snippet(models: Iterable[str]) -> str:
    """The config-file tables that give ``models`` a price (the figures are placeholders)."""
    return "\n".join(
        f'[prices."{model}"]\n'
        "input = 3.0    # USD per million input tokens: this model's price\n"
        "output = 15.0  # USD per million output tokens"
        for model in models
    )


def config_file_name(known: Endpoints) -> str:
    """The config file prices go in: the one in use, else where one would be read."""
    if known.config_path is not None:
        return str(known.config_path)
    return "./batchrun.toml, or the file --config names"


def held_reason(batch_id: str, held: Mapping[str, int], budget_usd: float | None) -> str:
    """Why a batch with a budget holds the requests of models without a price (``held``:
    model → requests held), and the two ways on: a price, or a cancel."""
    models = sorted(held)
    count = sum(held.values())
    budget = "its max-cost" if budget_usd is None else f"max-cost {format_usd(budget_usd)}"
    tables = " ".join(f'[prices."{model}"]' for model in models)
    return (
        f"{count:,} request{'s' if count != 1 else ''} of {', '.join(models)} "
        f"{'are' if count != 1 else 'is'} held, unsent: no price, so {budget} cannot be kept "
        f"for {'them' if count != 1 else 'it'}; add {tables} to the config file (the next run "
        f"sends them), or end the batch without them with `batchrun cancel {batch_id}`"
    )


def unpriced_refusal(
    unpriced: Mapping[str, list[str]], *, config_file: str, nothing: str
) -> UnpricedModelsError:
    """The error that refuses a budget for batches with unpriced models (``unpriced``: by
    what they are, a batch id or the request file, the models), naming them and the fix:
    the TOML that prices them, or holding their requests. ``nothing``: what was not done
    ("stored", "sent")."""
    models = sorted({model for found in unpriced.values() for model in found})
    several = len(models) > 1
    if len(unpriced) == 1:
        where = next(iter(unpriced))
    else:
        where = "; ".join(f"{what}: {', '.join(found)}" for what, found in unpriced.items())
    return UnpricedModelsError(
        f"--max-cost cannot be kept for {', '.join(models)}: "
        f"{'they have' if several else 'it has'} no price, so what "
        f"{'their' if several else 'its'} requests cost cannot be counted (in {where}); "
        f"nothing was {nothing}. Add {'their prices' if several else 'its price'} to the "
        f"config file ({config_file}):\n"
        f"{price_snippet(models)}\n"
        f"or pass {HOLD_UNPRICED_FLAG} (hold_unpriced=True from Python): the other requests run "
        "within the budget, and these models' requests stay queued, unsent, until a price is "
        "added (or the batch is canceled or expires)",
        models=models,
    )


@dataclass
class _Account:
    budget_usd: float
    # What the database said at the last refresh (or at the start).
    recorded_usd: float
    # This worker's spending since it started, and its value when the last refresh began.
    own_usd: float = 0.0
    own_at_refresh_usd: float = 0.0
    reserved_usd: float = 0.0

    @property
    def spent_usd(self) -> float:
        # An answer that came in after the refresh began and was committed before the read
        # is counted twice, which errs on the side of the budget; one that came in before it
        # began but was committed only after the read is missed until the next refresh
        # (the caller waits a moment for the group commit between the two).
        return self.recorded_usd + self.own_usd - self.own_at_refresh_usd


class BudgetGuard:
    """Admits requests of budgeted batches while they fit, and accounts for their answers."""

    def __init__(
        self,
        prices: PriceTable,
        budgets: Mapping[str, float | None],
        spent: Mapping[str, CostTotal],
    ) -> None:
        """``budgets`` by batch id (None: no budget); ``spent``: each batch's recorded cost."""
        self._prices = prices
        self._accounts = {
            batch_id: _Account(budget, spent.get(batch_id, CostTotal()).known_usd)
            for batch_id, budget in budgets.items()
            if budget is not None
        }
        self._held: dict[int, tuple[str, float]] = {}

    def add(self, batch_id: str, budget_usd: float, spent: CostTotal) -> None:
        """Keep the budget of a batch that joined the run in progress (``run --forever``);
        ``spent``: its recorded cost. A batch the guard already keeps is left as it is."""
        self._accounts.setdefault(batch_id, _Account(budget_usd, spent.known_usd))

    @property
    def batch_ids(self) -> list[str]:
        """The batches that have a budget."""
        return list(self._accounts)

    def admit(
        self, *, request_id: int, batch_id: str, model: str, input_estimate: int, max_tokens: int
    ) -> str | None:
        """Reserve the request's worst-case cost and return None, or return why it may not be
        sent (the budget would be passed, or the model has no price to count with)."""
        account = self._accounts.get(batch_id)
        if account is None:
            return None
        price = self._prices.price_for(model)
        if price is None:
            return (
                f"model {model} has no price, so max-cost {format_usd(account.budget_usd)} "
                f'cannot be kept; add [prices."{model}"] to the config file'
            )
        worst_usd = price.cost_usd(input_tokens=input_estimate, output_tokens=max_tokens)
        committed = account.spent_usd + account.reserved_usd
        if committed + worst_usd > account.budget_usd:
            return (
                f"max-cost {format_usd(account.budget_usd)} reached: when the next request "
                f"was due, {format_usd(account.spent_usd)} was spent, "
                f"{format_usd(account.reserved_usd)} was reserved by requests in flight (their "
                f"answers are counted in the cost once in), and the next request may cost up "
                f"to {format_usd(worst_usd)}; raise the budget with "
                f"`batchrun run {batch_id} --max-cost USD`"
            )
        account.reserved_usd += worst_usd
        self._held[request_id] = (batch_id, worst_usd)
        return None

    def settle(self, request_id: int, model: str | None, outcome: object) -> None:
        """Release the request's reservation and count what its answer cost."""
        held = self._held.pop(request_id, None)
        if held is None:
            return
        batch_id, reserved_usd = held
        account = self._accounts[batch_id]
        account.reserved_usd = max(account.reserved_usd - reserved_usd, 0.0)
        if isinstance(outcome, Succeeded):
            account.own_usd += self.cost_usd(outcome.model or model, outcome.usage) or 0.0

    def cost_usd(self, model: str | None, usage: Usage) -> float | None:
        """What an answer with ``usage`` cost, or None if the model has no price."""
        price = self._prices.price_for(model)
        if price is None:
            return None
        return price.usage_cost_usd(usage)

    def begin_refresh(self) -> None:
        """Mark this worker's spending before the database is read again."""
        for account in self._accounts.values():
            account.own_at_refresh_usd = account.own_usd

    def refresh(self, spent: Mapping[str, CostTotal]) -> None:
        """Take each batch's recorded cost (by every worker) from a fresh database read that
        began after :meth:`begin_refresh`."""
        for batch_id, account in self._accounts.items():
            if batch_id in spent:
                account.recorded_usd = spent[batch_id].known_usd

    def spent_usd(self, batch_id: str) -> float | None:
        """The batch's cost so far as the guard counts it (None: no budget)."""
        account = self._accounts.get(batch_id)
        return None if account is None else account.spent_usd
