"""Wiring for one ``batchrun run``: endpoints → HTTP clients → dispatcher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

from batchrun.client import MessagesClient, create_http_client, in_process_transport
from batchrun.config import DEFAULT_TIMEOUT_S, DispatchConfig
from batchrun.dispatcher import Dispatcher, RunReport, Sender
from batchrun.endpoints import auth_headers, find_endpoint
from batchrun.limiter import Limiter, LimiterSettings, RateLimits
from batchrun.simulator import SimulatorConfig, create_app
from batchrun.store.store import Store


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


async def run_batches(
    store: Store,
    batches: Mapping[str, str],
    *,
    env: Mapping[str, str],
    dispatch: DispatchConfig,
    limits: RateLimits | None = None,
    limiter_settings: LimiterSettings | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    simulator: SimulatorConfig | None = None,
) -> RunReport:
    """Dispatch these batches (id → endpoint name) until no work is left.

    Every endpoint's key is checked before the first request is sent, so a missing key is
    one clear error rather than a batch full of failures.
    """
    endpoints = {name: find_endpoint(name, env) for name in set(batches.values())}
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
                    timeout_s=timeout_s,
                    max_connections=dispatch.max_concurrency,
                    transport=transport,
                )
            )
            senders[name] = MessagesClient(http, endpoint=endpoint, headers=headers[name])
        dispatcher = Dispatcher(
            store=store,
            senders=senders,
            limiter=Limiter(overrides=limits, settings=limiter_settings),
            config=dispatch,
        )
        return await dispatcher.run(batches)
