"""Wiring for one ``batchrun run``: endpoints → HTTP clients → dispatcher.

The run's flags are applied here, on top of each endpoint's settings: a flag given on the
command line wins over the endpoint's value (from the config file or the built-in), which
wins over batchrun's default.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, replace

from batchrun.banks import DatabaseBank
from batchrun.client import MessagesClient, create_http_client, in_process_transport
from batchrun.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, DispatchConfig
from batchrun.dispatcher import Dispatcher, RunObserver, RunReport, Sender
from batchrun.endpoints import Endpoint, Endpoints, auth_headers
from batchrun.errors import UnknownEndpointError
from batchrun.limiter import Limiter, LimiterSettings, LimitKey, RateLimits
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """The batches a run will dispatch (id → endpoint name) and those it skips (id → why)."""

    batches: dict[str, str]
    skipped: dict[str, str]


def plan_run(store: Store, batch_ids: Sequence[str]) -> RunPlan:
    """Which of the named batches (all with open work when none is named) a run dispatches."""
    chosen = list(batch_ids) or store.batches_with_open_work()
    batches: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for batch_id in chosen:
        batch = store.get_batch(batch_id)
        if batch.processing_status != "in_progress":
            skipped[batch_id] = batch.processing_status
        elif batch.counts.processing == 0:
            skipped[batch_id] = "nothing left to send"
        else:
            batches[batch_id] = batch.endpoint
    return RunPlan(batches, skipped)


def run_endpoints(plan: RunPlan, known: Endpoints) -> dict[str, Endpoint]:
    """The endpoints the plan's batches use, by name; UnknownEndpointError if a batch names
    one that is no longer defined (a config file changed or is not found)."""
    used: dict[str, Endpoint] = {}
    for batch_id, name in plan.batches.items():
        if name not in known.by_name:
            raise UnknownEndpointError(
                f"batch {batch_id} uses endpoint {name!r}, which is not defined here; define "
                f"it in the config file, or move the batch with `batchrun run {batch_id} "
                "--endpoint NAME`"
            )
        used[name] = known.by_name[name]
    return used


def move_batches(store: Store, plan: RunPlan, endpoint: str) -> RunPlan:
    """Store ``endpoint`` on every batch of the plan, so this run and later ones send the
    remaining requests there; returns the plan with the new endpoint."""
    for batch_id in plan.batches:
        store.set_endpoint(batch_id, endpoint)
    return replace(plan, batches=dict.fromkeys(plan.batches, endpoint))


def dispatch_config(
    endpoints: Mapping[str, Endpoint],
    *,
    max_concurrency: int,
    max_attempts: int | None,
    count_tokens: bool = False,
) -> DispatchConfig:
    """The dispatch settings: the --max-attempts flag for every endpoint when given, else
    each endpoint's own max_attempts, else the default."""
    if max_attempts is not None:
        return DispatchConfig(
            max_concurrency=max_concurrency, max_attempts=max_attempts, count_tokens=count_tokens
        )
    own = {
        name: endpoint.max_attempts
        for name, endpoint in endpoints.items()
        if endpoint.max_attempts is not None
    }
    return DispatchConfig(
        max_concurrency=max_concurrency,
        max_attempts=DEFAULT_MAX_ATTEMPTS,
        max_attempts_by_endpoint=own,
        count_tokens=count_tokens,
    )


def rate_limits(endpoints: Mapping[str, Endpoint]) -> dict[LimitKey, RateLimits]:
    """The limiter's limits per (endpoint, model) from the endpoints' per-model limits; an
    endpoint's "*" entry covers its models that have no entry of their own."""
    return {
        (name, model): limits
        for name, endpoint in endpoints.items()
        for model, limits in endpoint.limits.items()
    }


async def run_batches(
    store: Store,
    batches: Mapping[str, str],
    *,
    endpoints: Mapping[str, Endpoint],
    env: Mapping[str, str],
    dispatch: DispatchConfig,
    overrides: RateLimits | None = None,
    limiter_settings: LimiterSettings | None = None,
    timeout_s: float | None = None,
    simulator: SimulatorConfig | None = None,
    observer: RunObserver | None = None,
) -> RunReport:
    """Dispatch these batches (id → endpoint name) until no work is left.

    ``timeout_s`` and ``overrides`` (limits for every model) come from the run's flags;
    None leaves each endpoint's own. ``observer`` watches the run (progress, budgets).
    Every endpoint's key is checked before the first request is sent, so a missing key is
    one clear error rather than a batch full of failures.
    """
    headers = {name: auth_headers(endpoint, env) for name, endpoint in endpoints.items()}
    async with AsyncExitStack() as stack:
        senders: dict[str, Sender] = {}
        for name, endpoint in endpoints.items():
            transport = (
                in_process_transport(create_app(simulator or SimulatorConfig()))
                if endpoint.in_process
                else None
            )
            http = await stack.enter_async_context(
                create_http_client(
                    timeout_s=timeout_s or endpoint.timeout_s or DEFAULT_TIMEOUT_S,
                    max_connections=dispatch.max_concurrency,
                    transport=transport,
                )
            )
            senders[name] = MessagesClient(http, endpoint=endpoint, headers=headers[name])
        # The buckets live in the database, so every worker using it shares the limits.
        bank = DatabaseBank(store.rates)
        stack.callback(bank.close)
        dispatcher = Dispatcher(
            store=store,
            senders=senders,
            limiter=Limiter(
                rate_limits(endpoints),
                overrides=overrides,
                settings=limiter_settings,
                bank=bank,
            ),
            config=dispatch,
            observer=observer,
        )
        with _stop_on_signals(dispatcher):
            return await dispatcher.run(batches)


@contextmanager
def _stop_on_signals(dispatcher: Dispatcher) -> Iterator[None]:
    """Ctrl-C and SIGTERM stop the dispatcher gracefully (a second one at once)."""
    loop = asyncio.get_running_loop()
    installed = []
    for signum, name in ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")):
        try:
            loop.add_signal_handler(signum, dispatcher.request_stop, f"interrupted by {name}")
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or a platform without signals
        installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
