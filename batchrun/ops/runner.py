"""Wiring for one dispatch: which batches, their endpoints → HTTP clients → the dispatcher.

The run's options are applied here, on top of each endpoint's settings: an option given to
the run wins over the endpoint's value (from the config file or the built-in), which wins
over batchrun's default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from batchrun.dispatch.clock import LoopClock
from batchrun.dispatch.counts import RunReport
from batchrun.dispatch.dispatcher import Dispatcher
from batchrun.dispatch.seams import Linger, RunObserver, Sender
from batchrun.dispatch.settings import DEFAULT_MAX_ATTEMPTS, MAX_IN_FLIGHT, DispatchConfig
from batchrun.dispatch.worker_db import WorkerDatabase
from batchrun.errors import UnknownEndpointError
from batchrun.limits.banks import DatabaseBank
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.limiter import Limiter, LimiterSettings, LimitKey
from batchrun.ops.waiting import WaitingBatch
from batchrun.records import Pool
from batchrun.transport.endpoints import DEFAULT_TIMEOUT_S, Endpoint, Endpoints, auth_headers
from batchrun.transport.http import HttpTransport, create_http_client, in_process_transport
from batchrun.transport.messages import MessagesClient

if TYPE_CHECKING:
    from batchrun.simulator.config import SimulatorConfig

log = logging.getLogger(__name__)

# Open files kept for what is not a request in flight: the database, logs, the simulator.
RESERVED_FILES = 256


@dataclass(frozen=True)
class RunPlan:
    """The batches a run will dispatch (id → endpoint name), those it skips (id → why),
    canceled ones whose provider batches still need their results imported (id → endpoint
    name; the batch lane only), and those it leaves waiting (:class:`WaitingBatch`)."""

    batches: dict[str, str]
    skipped: dict[str, str]
    lane_only: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, WaitingBatch] = field(default_factory=dict)


async def plan_run(db: WorkerDatabase, batch_ids: Sequence[str]) -> RunPlan:
    """Which of the named batches (all with open work when none is named) a run dispatches."""
    chosen = list(batch_ids) or await db.batches_with_open_work()
    batches: dict[str, str] = {}
    skipped: dict[str, str] = {}
    lane_only: dict[str, str] = {}
    for batch_id in chosen:
        batch = await db.get_batch(batch_id)
        if batch.processing_status == "canceling" and await db.provider_batches_of(
            [batch_id], open_only=True
        ):
            lane_only[batch_id] = batch.endpoint
        elif batch.processing_status != "in_progress":
            skipped[batch_id] = batch.processing_status
        elif batch.counts.processing == 0:
            skipped[batch_id] = "nothing left to send"
        else:
            batches[batch_id] = batch.endpoint
    return RunPlan(batches, skipped, lane_only)


def run_endpoints(plan: RunPlan, known: Endpoints) -> dict[str, Endpoint]:
    """The endpoints the plan's batches use, by name (a pool's members for a batch on a
    pool); UnknownEndpointError if a batch names one that is no longer defined (a config file
    changed or is not found)."""
    used: dict[str, Endpoint] = {}
    for batch_id, name in plan.batches.items():
        if name not in known.by_name and name not in known.pools:
            raise UnknownEndpointError(
                f"batch {batch_id} uses endpoint {name!r}, which is not defined here; define "
                f"it in the config file, or move the batch with `batchrun run {batch_id} "
                "--endpoint NAME`",
                endpoint=name,
            )
        used.update(known.members(name))
    return used


def in_flight_ceiling() -> int:
    """The most requests a worker may hold in flight on this machine: MAX_IN_FLIGHT, or
    fewer when the process may open fewer files (each request in flight holds a socket).
    The soft limit on open files is raised to the hard one first, as servers do."""
    try:
        import resource
    except ImportError:  # Windows: no RLIMIT_NOFILE; sockets are not counted the same way.
        return MAX_IN_FLIGHT
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = MAX_IN_FLIGHT + RESERVED_FILES
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    return max(1, min(MAX_IN_FLIGHT, soft - RESERVED_FILES))


async def move_batches(db: WorkerDatabase, plan: RunPlan, endpoint: str) -> RunPlan:
    """Store ``endpoint`` on every batch of the plan, so this run and later ones send the
    remaining requests there; returns the plan with the new endpoint."""
    for batch_id in plan.batches:
        await db.set_endpoint(batch_id, endpoint)
    return replace(plan, batches=dict.fromkeys(plan.batches, endpoint))


def dispatch_config(
    endpoints: Mapping[str, Endpoint],
    *,
    max_concurrency: int | None,
    max_attempts: int | None,
    count_tokens: bool = False,
) -> DispatchConfig:
    """The dispatch settings: ``max_attempts`` for every endpoint when given, else each
    endpoint's own max_attempts, else the default. ``max_concurrency`` None: worked out
    from the limits, up to what this machine allows (:func:`in_flight_ceiling`)."""
    ceiling = in_flight_ceiling() if max_concurrency is None else max_concurrency
    if max_attempts is not None:
        return DispatchConfig(
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            count_tokens=count_tokens,
            in_flight_ceiling=ceiling,
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
        in_flight_ceiling=ceiling,
    )


def rate_limits(endpoints: Mapping[str, Endpoint]) -> dict[LimitKey, RateLimits]:
    """The limiter's limits per (endpoint, model) from the endpoints' per-model limits; an
    endpoint's "*" entry covers its models that have no entry of their own."""
    return {
        (name, model): limits
        for name, endpoint in endpoints.items()
        for model, limits in endpoint.limits.items()
    }


async def dispatch_batches(
    db: WorkerDatabase,
    batches: Mapping[str, str],
    *,
    endpoints: Mapping[str, Endpoint],
    env: Mapping[str, str],
    dispatch: DispatchConfig,
    overrides: RateLimits | None = None,
    endpoint_overrides: RateLimits | None = None,
    limiter_settings: LimiterSettings | None = None,
    timeout_s: float | None = None,
    simulator: SimulatorConfig | None = None,
    observer: RunObserver | None = None,
    on_start: Callable[[Dispatcher], None] | None = None,
    pools: Mapping[str, Pool] | None = None,
    linger: Linger | None = None,
    simulator_transport: HttpTransport | None = None,
) -> RunReport:
    """Dispatch these batches (id → endpoint name) until no work is left.

    ``timeout_s``, ``overrides`` (limits for every model) and ``endpoint_overrides``
    (limits across all the models of every endpoint) come from the run's options; None
    leaves each endpoint's own. ``observer`` watches the run (progress, budgets).
    Every endpoint's key is checked before the first request is sent, so a missing key is
    one clear error rather than a batch full of failures. ``on_start`` gets the dispatcher
    before it runs (to stop it from outside: a signal, a time limit). ``linger``: work that
    may come back while the queue is empty (the batch lane). ``simulator_transport``: the
    run's in-process simulator, shared with the batch lane (else one is made).
    """
    headers = {name: auth_headers(endpoint, env) for name, endpoint in endpoints.items()}
    clock = unix_clock()
    async with AsyncExitStack() as stack:
        senders: dict[str, Sender] = {}
        for name, endpoint in endpoints.items():
            transport = None
            if endpoint.in_process:
                transport = simulator_transport or _simulator_transport(simulator)
            attempt_timeout_s = timeout_s or endpoint.timeout_s or DEFAULT_TIMEOUT_S
            http = await stack.enter_async_context(
                create_http_client(
                    timeout_s=attempt_timeout_s,
                    max_connections=dispatch.max_concurrency or dispatch.in_flight_ceiling,
                    transport=transport,
                )
            )
            senders[name] = MessagesClient(
                http,
                endpoint=endpoint,
                headers=headers[name],
                timeout_s=attempt_timeout_s,
                max_response_bytes=endpoint.max_response_bytes,
            )
        dispatcher = Dispatcher(
            db=db,
            senders=senders,
            limiter=Limiter(
                rate_limits(endpoints),
                overrides=overrides,
                endpoint_limits={
                    name: endpoint.endpoint_limits for name, endpoint in endpoints.items()
                },
                endpoint_overrides=endpoint_overrides,
                settings=limiter_settings,
                # The buckets live in the database, so every worker using it shares the limits.
                bank=DatabaseBank(db, clock=clock),
            ),
            config=dispatch,
            observer=observer,
            pools=pools,
            clock=clock,
            linger=linger,
        )
        if on_start is not None:
            on_start(dispatcher)
        return await dispatcher.run(batches)


def simulator_transport(config: SimulatorConfig | None = None) -> HttpTransport:
    """An in-process simulator for one run (its real-time and batch lanes share it)."""
    return _simulator_transport(config)


def _simulator_transport(config: SimulatorConfig | None) -> HttpTransport:
    # Imported here: the simulator is needed only by runs on the in-process endpoint.
    from batchrun.simulator.app import create_app
    from batchrun.simulator.config import SimulatorConfig

    return in_process_transport(create_app(config or SimulatorConfig()))


def unix_clock() -> Callable[[], float]:
    """Unix seconds that advance with the running event loop's clock (tests can fake it)."""
    clock = LoopClock()
    return lambda: clock.now().timestamp()
