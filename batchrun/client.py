"""The public Python API: batchrun inside Python (notebooks, Airflow, Dagster or Prefect
tasks, test fixtures), without shelling out. The ``batchrun`` command is a thin shell over it.

::

    import batchrun

    with batchrun.Client(db="sqlite:///jobs.db") as client:
        batch = client.submit("requests.jsonl", endpoint="simulator")
        result = client.run(batch.id, limits={"rpm": 600})  # blocks until no work is left
        for line in client.results(batch.id):       # Anthropic's results format, input order
            print(line["custom_id"], line["result"]["type"])

Defaults are the CLI's: the database is ``db``, else ``$BATCHRUN_DATABASE_URL``, else
``~/.local/share/batchrun/batchrun.db``; the config file is ``config``, else the first found of
``$BATCHRUN_CONFIG``, ``./batchrun.toml`` and ``~/.config/batchrun/config.toml``; API keys come
from the environment when a run starts. ``env`` replaces ``os.environ`` for all of these.

Every method that waits has an ``a``-prefixed twin for callers with their own event loop
(``await client.arun(...)``); the blocking ones run it with ``asyncio.run``. Errors are the
:class:`~batchrun.errors.BatchrunError` classes the CLI prints.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, get_args

from batchrun.errors import (
    BatchrunError,
    BatchStateError,
    ConfigError,
    DatabaseError,
    MissingExtraError,
    UsageError,
)
from batchrun.records import CacheTtl, Lane

if TYPE_CHECKING:
    from pydantic import BaseModel

    from batchrun.config.file import Settings
    from batchrun.config.prices import PriceTable
    from batchrun.export.batch_object import BatchObject, BatchStatus, ProviderBatchModel
    from batchrun.input.frames import OutputSchema, TableData
    from batchrun.input.sources import Requests
    from batchrun.limits.dimensions import RateLimits
    from batchrun.ops.planning import FilePlan
    from batchrun.ops.session import RunEvent, RunResult, RunSession
    from batchrun.ops.views.report.data import ReportData
    from batchrun.ops.waiting import WaitingBatch
    from batchrun.records import BatchStats, BatchSummary, ResultDetail
    from batchrun.store.rates import LearnedLimit
    from batchrun.store.store import Store
    from batchrun.transport.endpoints import Endpoint, Endpoints
    from batchrun.transport.notify import WebhookNotifier

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
# The Pydantic model `parsed` reads answers into.
M = TypeVar("M", bound="BaseModel")

DATABASE_ENV = "BATCHRUN_DATABASE_URL"
# The longest batch name kept (the batches table's column).
MAX_NAME_CHARS = 200
# Results fetched per hop when iterating them asynchronously.
_ASYNC_RESULT_CHUNK = 1000
ResultState = Literal["succeeded", "errored", "canceled", "expired"]
# The states a result ends in, as ``only`` takes them.
RESULT_STATES: tuple[str, ...] = get_args(ResultState)
LockMode = Literal["exclusive", "wait", "share"]
# Per-minute limits by dimension name (``{"rpm": 600, "tpm": 60_000}``); None: no limit.
Limits = Mapping[str, float | None]


def _unpriced_refusal(
    prices: PriceTable, known: Endpoints, source: str | None
) -> Callable[[set[str]], None]:
    """The check a submit with a budget makes of its requests' models: UnpricedModelsError
    for models without a price, raised inside the store's transaction so that nothing of
    the batch is stored."""
    from batchrun.ops.budget import config_file_name, unpriced_models, unpriced_refusal

    def check(models: set[str]) -> None:
        if unpriced := unpriced_models(models, prices):
            raise unpriced_refusal(
                {source or "the requests": unpriced},
                config_file=config_file_name(known),
                nothing="stored",
            )

    return check


def default_database_url(env: Mapping[str, str]) -> str:
    """The SQLite database used when neither ``db`` nor ``$BATCHRUN_DATABASE_URL`` is given:
    ``$XDG_DATA_HOME/batchrun/batchrun.db``, by default under ``~/.local/share``."""
    if data_home := env.get("XDG_DATA_HOME", "").strip():
        base = Path(data_home)
    else:
        base = (Path(env["HOME"]) if env.get("HOME") else Path.home()) / ".local" / "share"
    return f"sqlite:///{base / 'batchrun' / 'batchrun.db'}"


class Client:
    """batchrun's batches, runs and results in one database."""

    def __init__(
        self,
        db: str | None = None,
        *,
        config: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        """``db``: a database URL (``sqlite:///file.db`` or ``postgresql+psycopg://...``);
        ``config``: a config file that must exist; ``env``: the environment to read keys and
        defaults from (default ``os.environ``); ``cwd``: where ``./batchrun.toml`` is looked
        for (default the current directory). Nothing is opened until it is needed."""
        self._env: dict[str, str] = dict(os.environ if env is None else env)
        self.database_url: str = (
            db or self._env.get(DATABASE_ENV, "").strip() or default_database_url(self._env)
        )
        self._config_file = Path(config) if config is not None else None
        self._cwd = Path(cwd) if cwd is not None else Path.cwd()
        self._settings_cache: Settings | None = None
        self._endpoints_cache: Endpoints | None = None
        self._store_cache: Store | None = None

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the database connections (the client opens them again when needed)."""
        if self._store_cache is not None:
            self._store_cache.close()
            self._store_cache = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what is configured ---------------------------------------------------------------

    def settings(self) -> Settings:
        """What the config file says (read once)."""
        if self._settings_cache is None:
            from batchrun.config.file import find_config_file, load_settings

            path = find_config_file(self._config_file, self._env, self._cwd)
            self._settings_cache = load_settings(path)
        return self._settings_cache

    def endpoints(self) -> Endpoints:
        """Every endpoint: built-in, from the config file, as the environment changes them."""
        if self._endpoints_cache is None:
            from batchrun.config.file import endpoints_of

            self._endpoints_cache = endpoints_of(self.settings(), self._env)
        return self._endpoints_cache

    def _cache_ttl(self, given: str | None) -> str:
        """The cache TTL policy of a submit: ``given``, else the config file's, else auto;
        ConfigError for an unknown one."""
        if given is not None:
            return _check_cache_ttl(given, "--cache-ttl")
        configured = self.settings().cache_ttl
        return CacheTtl.AUTO if configured is None else configured

    def prices(self) -> PriceTable:
        """The price table: built-in prices with the config file's on top."""
        from batchrun.config.file import prices_of

        return prices_of(self.settings())

    # -- the database ---------------------------------------------------------------------

    def _store(self) -> Store:
        """The store, opened (created and migrated if needed) on first use; batches whose
        time is up are expired first, whether or not a worker runs, so every call sees it."""
        if self._store_cache is None:
            from batchrun.store.store import Store

            self._store_cache = Store.open(self.database_url)
        self._store_cache.lifecycle.expire_due(_now())
        return self._store_cache

    def upgrade_database(self) -> tuple[str | None, str]:
        """Create the database or migrate it to this batchrun's schema; returns (revision
        before, revision after)."""
        from batchrun.store.database import create_database_engine, upgrade_database

        engine = create_database_engine(self.database_url)
        try:
            return upgrade_database(engine)
        finally:
            engine.dispose()

    def database_revision(self) -> str | None:
        """The database's schema revision (None: empty)."""
        from batchrun.store.database import create_database_engine, current_revision

        engine = create_database_engine(self.database_url)
        try:
            return current_revision(engine)
        finally:
            engine.dispose()

    def learned_limits(self) -> builtins.list[LearnedLimit]:
        """The limits learned from 429s that the database keeps per endpoint × model (the
        next run starts from them), with when each was learned; empty when there is no
        database yet (none is created to find out)."""
        from batchrun.store.database import sqlite_path

        if self.database_url.startswith("sqlite"):
            path = sqlite_path(self.database_url)
            if path is None or not path.exists():
                return []
        if self.database_revision() is None:
            return []
        return self._store().rates.learned()

    # -- batches --------------------------------------------------------------------------

    def submit(
        self,
        requests: Requests,
        *,
        endpoint: str | None = None,
        name: str | None = None,
        model: str | None = None,
        expires_in_s: float | None = None,
        skip_invalid: bool = False,
        max_cost_usd: float | None = None,
        max_requests: int | None = None,
        max_file_bytes: int | None = None,
        on_skipped: Callable[[str], None] | None = None,
        lane: str = Lane.REALTIME,
        reuse: bool = False,
        hold_unpriced: bool = False,
        repair: int | None = None,
        cache_ttl: str | None = None,
    ) -> BatchObject:
        """Validate every request and store them as one batch, in one transaction (with its
        budget ``max_cost_usd``); returns the batch object.

        A budget cannot be kept for a model without a price: with ``max_cost_usd``, a file
        that uses one is refused (UnpricedModelsError naming the models and the price table
        to add; nothing is stored), unless ``hold_unpriced``: then runs send the priced
        requests within the budget and hold those of unpriced models, unsent, until a price
        is added.

        ``requests`` is a path (``"-"``: standard input), a binary stream, or an iterable of
        request objects ``{"custom_id": ..., "params": {...}}``. If any request is invalid,
        InputFileError lists every problem (``source:line: what; how to fix``) and nothing
        is stored; with ``skip_invalid`` invalid lines are stored as errored results and
        ``on_skipped`` gets each of their problems. ``endpoint`` defaults to
        ``$BATCHRUN_ENDPOINT``, else the config file's default, else ``anthropic``.
        ``expires_in_s`` (default 24 h) is when unsent requests expire; ``max_requests`` and
        ``max_file_bytes`` (default Anthropic's 100,000 and 256 MB) cap the batch.
        ``lane``: ``realtime`` (the Messages API), ``batch`` (the endpoint's batch API, at
        its discount) or ``auto`` (the batch API while the deadline leaves time for real
        time to finish what it leaves; see "Paying less" in the docs). ``reuse``: a request
        whose params already succeeded in this database is answered from the stored answer
        (nothing sent, cost 0), and identical params in the batch are sent once.
        ``repair``: repair sends per request at most when an answer does not match the schema
        its request asked for (``output_config.format`` or the forced ``answer`` tool;
        default 1, 0: none; see "From a table" in the docs).
        ``cache_ttl`` (``auto`` or ``keep``; default the config file's ``cache_ttl``, else
        ``auto``): with ``auto`` and the batch lane, the requests of a prompt-cache group
        (the leader sent alone in real time, its followers in provider batches) carry
        ``"ttl": "1h"`` on their breakpoints so the leader's write outlives the provider's
        wait; ``keep`` sends them as written (see "Paying less" in the docs).
        """
        from batchrun.batch_lane import check_lane
        from batchrun.export.batch_object import BatchObject
        from batchrun.input.ingest import submit_requests
        from batchrun.input.reader import MAX_FILE_BYTES, MAX_REQUESTS
        from batchrun.input.sources import open_requests

        expires_in_s = _submit_arguments(expires_in_s, max_cost_usd, name)
        known = self.endpoints()
        target = known.check(endpoint or known.default)
        check_lane(lane, known, target)
        store = self._store()
        refuse_unpriced = max_cost_usd is not None and not hold_unpriced
        with open_requests(requests) as (stream, source):
            batch_id = submit_requests(
                store,
                stream,
                source=source,
                endpoint=target,
                now=_now(),
                name=name,
                default_model=model,
                max_requests=max_requests or MAX_REQUESTS,
                max_file_bytes=max_file_bytes or MAX_FILE_BYTES,
                expires_in_s=expires_in_s,
                skip_invalid=skip_invalid,
                on_skipped=on_skipped,
                max_cost_usd=max_cost_usd,
                lane=lane,
                reuse=reuse,
                cache_ttl=self._cache_ttl(cache_ttl),
                check_models=(
                    _unpriced_refusal(self.prices(), known, source) if refuse_unpriced else None
                ),
                repair_limit=_repair_limit(repair, None),
            )
        return BatchObject.from_summary(store.batches.get(batch_id))

    def submit_table(
        self,
        data: TableData,
        *,
        template: str | os.PathLike[str] | Mapping[str, Any],
        output: OutputSchema | None = None,
        table_format: str | None = None,
        endpoint: str | None = None,
        name: str | None = None,
        model: str | None = None,
        expires_in_s: float | None = None,
        skip_invalid: bool = False,
        max_cost_usd: float | None = None,
        max_requests: int | None = None,
        max_file_bytes: int | None = None,
        on_skipped: Callable[[str], None] | None = None,
        lane: str = Lane.REALTIME,
        reuse: bool = False,
        hold_unpriced: bool = False,
        repair: int | None = None,
        cache_ttl: str | None = None,
    ) -> BatchObject:
        """Render each row of ``data`` into a request with ``template`` and store them as
        one batch, with the rows, in one transaction; returns the batch object.

        ``data`` is a path (``"-"``: standard input) to CSV or TSV with a header row,
        Parquet (needs pyarrow) or JSON lines of objects (``table_format``: ``csv``,
        ``tsv``, ``parquet``, ``jsonl`` overrides the guess from the extension); or the
        rows themselves: a pandas DataFrame, a pyarrow Table or an iterable of dicts.
        ``template`` is a template file's path or its parsed TOML (see "From a table" in
        the docs); ``output`` replaces its ``[output]``: a Pydantic model class (its JSON
        Schema, every object closed), a JSON Schema as a dict, or a JSON file's path. If
        any row cannot be rendered or makes an invalid request, InputFileError lists every
        problem (``table:row N: what; how to fix``) and nothing is stored. ``repair``
        replaces the template's ``repair`` (default 1). The other arguments are `submit`'s.
        """
        from batchrun.batch_lane import check_lane
        from batchrun.export.batch_object import BatchObject
        from batchrun.input.frames import model_schema
        from batchrun.input.ingest import submit_requests
        from batchrun.input.reader import MAX_FILE_BYTES, MAX_REQUESTS
        from batchrun.input.table_ingest import TableItems, open_table
        from batchrun.input.templates import template_from

        expires_in_s = _submit_arguments(expires_in_s, max_cost_usd, name)
        compiled = template_from(
            template, schema=model_schema(output) if isinstance(output, type) else output
        )
        known = self.endpoints()
        target = known.check(endpoint or known.default)
        check_lane(lane, known, target)
        store = self._store()
        refuse_unpriced = max_cost_usd is not None and not hold_unpriced
        keep = TableItems()
        with open_table(
            data,
            template=compiled,
            table_format=table_format,
            mode=known.structured_outputs(target) if compiled.output is not None else None,
            default_model=model,
            max_requests=max_requests or MAX_REQUESTS,
            max_file_bytes=max_file_bytes or MAX_FILE_BYTES,
            keep=keep,
        ) as opened:
            batch_id = submit_requests(
                store,
                None,
                source=opened.source,
                endpoint=target,
                now=_now(),
                name=name,
                default_model=model,
                expires_in_s=expires_in_s,
                skip_invalid=skip_invalid,
                on_skipped=on_skipped,
                max_cost_usd=max_cost_usd,
                lane=lane,
                reuse=reuse,
                cache_ttl=self._cache_ttl(cache_ttl),
                locate=opened.locate,
                check_models=(
                    _unpriced_refusal(self.prices(), known, opened.source)
                    if refuse_unpriced
                    else None
                ),
                items=opened.items,
                input_row=keep.input_row,
                repair_limit=_repair_limit(repair, compiled.repair),
            )
        return BatchObject.from_summary(store.batches.get(batch_id))

    def estimate(
        self,
        requests: Requests,
        *,
        endpoint: str | None = None,
        model: str | None = None,
        output_share: float | None = None,
        limits: Limits | None = None,
        endpoint_limits: Limits | None = None,
        max_requests: int | None = None,
        max_file_bytes: int | None = None,
        lane: str = Lane.REALTIME,
        expires_in_s: float | None = None,
        skip_invalid: bool = False,
    ) -> FilePlan:
        """Plan ``requests`` for an endpoint before spending: requests, input tokens, output
        tokens (expected at ``output_share`` of max_tokens, 0.3 unless given, and worst
        case), cost, and how long the endpoint's limits (``limits`` replacing them per
        model, ``endpoint_limits`` those across all its models; per minute by dimension
        name) make it take; with a batch API, the batch lane's cost and
        typical time too, and which lane ``lane`` would use (``auto``: for a deadline
        ``expires_in_s`` away, 24 h unless given). Nothing is stored or sent. Invalid lines
        raise :class:`InputFileError`, unless ``skip_invalid``: then the plan covers the
        valid lines and counts the others (``FilePlan.invalid_lines``), as
        ``submit(skip_invalid=True)`` would store them."""
        from batchrun.input.sources import open_requests
        from batchrun.ops.planning import plan_file

        known = self.endpoints()
        name = known.check(endpoint or known.default)
        with open_requests(requests) as (stream, source):
            return self._planned(
                name,
                lane=lane,
                expires_in_s=expires_in_s,
                plan=lambda target: plan_file(
                    stream,
                    source=source,
                    endpoint=target,
                    default_model=model,
                    max_requests=max_requests,
                    max_file_bytes=max_file_bytes,
                    **self._plan_options(output_share, limits, endpoint_limits, skip_invalid),
                ),
            )

    def _plan_options(
        self,
        output_share: float | None,
        limits: Limits | None,
        endpoint_limits: Limits | None,
        skip_invalid: bool,
    ) -> dict[str, Any]:
        """The planning arguments `estimate` and `estimate_table` share."""
        from batchrun.ops.planning import DEFAULT_OUTPUT_SHARE

        return {
            "prices": self.prices(),
            "overrides": _limits(limits),
            "endpoint_overrides": _limits(endpoint_limits, "endpoint_limits"),
            "output_share": DEFAULT_OUTPUT_SHARE if output_share is None else output_share,
            "skip_invalid": skip_invalid,
        }

    def _planned(
        self,
        name: str,
        *,
        lane: str,
        expires_in_s: float | None,
        plan: Callable[[Endpoint], FilePlan],
    ) -> FilePlan:
        """``plan`` for the endpoint ``name`` (as planning sees it), with the lanes' terms."""
        from batchrun.batch_lane import check_lane, lane_endpoint
        from batchrun.input.ingest import DEFAULT_EXPIRES_IN_S

        known = self.endpoints()
        check_lane(lane, known, name)
        batch_endpoint = lane_endpoint(known, name)
        return plan(known.for_planning(name)).with_lanes(
            None if batch_endpoint is None else batch_endpoint.batch_api,
            lane=lane,
            deadline_s=DEFAULT_EXPIRES_IN_S if expires_in_s is None else expires_in_s,
        )

    def estimate_table(
        self,
        data: TableData,
        *,
        template: str | os.PathLike[str] | Mapping[str, Any],
        output: OutputSchema | None = None,
        table_format: str | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        output_share: float | None = None,
        limits: Limits | None = None,
        endpoint_limits: Limits | None = None,
        max_requests: int | None = None,
        max_file_bytes: int | None = None,
        lane: str = Lane.REALTIME,
        expires_in_s: float | None = None,
        skip_invalid: bool = False,
    ) -> FilePlan:
        """Plan a table as :meth:`estimate` plans a request file: each row rendered by
        ``template`` exactly as :meth:`submit_table` would store it (structured-output
        additions and images included), one row at a time. Nothing is stored or sent. Rows
        that cannot be rendered or make invalid requests raise :class:`InputFileError`
        (``table:row N: ...``), unless ``skip_invalid``. Arguments as for
        :meth:`submit_table` and :meth:`estimate`."""
        from batchrun.input.frames import model_schema
        from batchrun.input.reader import MAX_FILE_BYTES, MAX_REQUESTS
        from batchrun.input.table_ingest import open_table
        from batchrun.input.templates import template_from
        from batchrun.ops.planning import plan_items

        compiled = template_from(
            template, schema=model_schema(output) if isinstance(output, type) else output
        )
        known = self.endpoints()
        name = known.check(endpoint or known.default)
        with open_table(
            data,
            template=compiled,
            table_format=table_format,
            mode=known.structured_outputs(name) if compiled.output is not None else None,
            default_model=model,
            max_requests=max_requests or MAX_REQUESTS,
            max_file_bytes=max_file_bytes or MAX_FILE_BYTES,
            keep=None,
        ) as opened:
            return self._planned(
                name,
                lane=lane,
                expires_in_s=expires_in_s,
                plan=lambda target: plan_items(
                    opened.items,
                    source=opened.source,
                    locate=opened.locate,
                    endpoint=target,
                    **self._plan_options(output_share, limits, endpoint_limits, skip_invalid),
                ),
            )

    def waiting_reason(self, batch_id: str) -> WaitingBatch | None:
        """Why a run from here would leave the batch waiting, sending nothing of it: a key or
        ``headers_env`` variable of its endpoint is not set in this environment, or its
        endpoint is not defined (any more); None when it can be sent. What ``submit`` warns
        about; a run reports it in :attr:`~batchrun.ops.session.RunResult.waiting`."""
        from batchrun.ops.waiting import waiting_reason

        batch = self._store().batches.get(batch_id)
        return waiting_reason(batch_id, batch.endpoint, self.endpoints(), self._env)

    def status(self, batch_id: str) -> BatchStatus:
        """The batch object with cost, budget, timings, throughput and frequent errors (what
        ``status --json`` prints); BatchNotFoundError if there is no such batch."""
        return self._status(batch_id)[0]

    def report(self, batch_id: str) -> ReportData:
        """What ``batchrun report`` draws of the batch (its status, sends against its
        limits, failures over time, latency per endpoint, cost over time), as values;
        :meth:`report_html` renders it. BatchNotFoundError if there is no such batch."""
        from batchrun.ops.views.report.data import ERROR_TYPES_SHOWN, gather_report

        status, stats, batch = self._status(batch_id, top_errors=ERROR_TYPES_SHOWN)
        return gather_report(
            self._store(),
            batch=batch,
            status=status,
            errors=stats.errors,
            known=self.endpoints(),
            prices=self.prices(),
            now=_now(),
        )

    def report_html(self, batch_id: str) -> str:
        """The page ``batchrun report`` writes: one self-contained HTML document with the
        charts of :meth:`report`. BatchNotFoundError if there is no such batch."""
        from batchrun.ops.views.report.page import render_report

        return render_report(self.report(batch_id))

    def _status(
        self, batch_id: str, *, top_errors: int = 5
    ) -> tuple[BatchStatus, BatchStats, BatchSummary]:
        """The status of the batch, with the stats and the summary it was built from."""
        from batchrun.config.prices import cache_accounting, cost_of
        from batchrun.export.batch_object import BatchStatus

        store = self._store()
        batch = store.batches.get(batch_id)
        stats = store.batches.stats(batch_id, top_errors=top_errors)
        prices = self.prices()
        members = self._pool_members(batch.endpoint)
        names = {share.endpoint for share in stats.endpoints} | set(members)
        health = store.health.of_endpoints(sorted(names)) if len(names) > 1 else {}
        status = BatchStatus.build(
            batch,
            stats,
            cost_of(stats.usage, prices),
            repair_cost=cost_of(stats.repairs, prices),
            members=members,
            health=health,
            provider_batches=store.provider_batches.of_batches([batch_id]),
            held_unpriced=store.lifecycle.held_by_model([batch_id]).get(batch_id),
            cache=cache_accounting(stats.usage, store.cache_warmth.totals(batch_id), prices),
        )
        return status, stats, batch

    def provider_batches(self, batch_id: str) -> builtins.list[ProviderBatchModel]:
        """The batch's provider batches (batch lane), oldest first; BatchNotFoundError if
        there is no such batch."""
        from batchrun.export.batch_object import ProviderBatchModel

        store = self._store()
        store.batches.get(batch_id)
        return [ProviderBatchModel.of(row) for row in store.provider_batches.of_batches([batch_id])]

    def settle_provider_batch(self, batch_id: str, row_id: int, *, provider_id: str | None) -> str:
        """Settle the create of provider-batch record ``row_id`` (an ambiguous or unsettled
        one): ``provider_id`` names the provider batch that holds its requests (adopted, its
        results imported by the next run); None says the create did not happen (the
        requests go back to the batch lane). Returns what was done; BatchStateError if the
        record is not one of the batch's, or is settled already."""
        store = self._store()
        row = store.provider_batches.get(row_id)
        if row is None or row.batch_id != batch_id:
            raise BatchStateError(
                f"batch {batch_id} has no provider-batch record {row_id}; "
                f"`batchrun lanes {batch_id}` lists them",
                batch_id=batch_id,
            )
        if row.state not in ("intent", "ambiguous"):
            raise BatchStateError(
                f"provider-batch record {row_id} is {row.state}; only an ambiguous or "
                "unsettled create can be settled",
                batch_id=batch_id,
            )
        if provider_id is not None:
            if provider_id in store.provider_batches.claimed_ids(row.endpoint):
                raise BatchStateError(
                    f"provider batch {provider_id} is already recorded for another record",
                    batch_id=batch_id,
                )
            store.provider_batches.created(
                row_id, provider_id=provider_id, created_at=None, next_poll_at=_now()
            )
            return f"record {row_id} is provider batch {provider_id}; the next run imports it"
        back = store.provider_batches.not_created(
            row_id, note="a person said the create did not happen", lane=Lane.BATCH, now=_now()
        )
        return f"record {row_id} was not created; {back:,} requests go back to the batch lane"

    def _pool_members(self, name: str) -> tuple[str, ...]:
        """The members of the pool ``name`` (none for an endpoint). A config file that does
        not load leaves them out rather than stopping `status`: it still shows who answered."""
        try:
            pool = self.endpoints().pools.get(name)
        except BatchrunError:
            return ()
        return pool.endpoint_names if pool is not None else ()

    def list(self) -> builtins.list[BatchObject]:
        """Every batch, newest first."""
        from batchrun.export.batch_object import batch_objects

        return batch_objects(self._store().batches.all())

    def cancel(self, batch_id: str, *, on_note: Callable[[str], None] | None = None) -> BatchObject:
        """Cancel a batch: queued requests are canceled at once; a worker running it stops
        sending it within a second, and requests in flight are still recorded. Its provider
        batches (batch lane) are canceled at the provider; what they finished is imported by
        the next run and kept (``on_note`` hears about each)."""
        import asyncio

        from batchrun.export.batch_object import BatchObject
        from batchrun.ops.lane_wiring import cancel_provider_batches

        store = self._store()
        store.lifecycle.cancel(batch_id, _now())
        if store.provider_batches.of_batches([batch_id], open_only=True):
            notes = asyncio.run(
                cancel_provider_batches(
                    store, batch_id, known=self.endpoints(), env=self._env, now=_now()
                )
            )
            for note in notes:
                if on_note is not None:
                    on_note(note)
        return BatchObject.from_summary(store.batches.get(batch_id))

    def requeue(
        self, batch_id: str, *, retry_errored: bool = False, expires_in_s: float | None = None
    ) -> int:
        """Put back in the queue what a cancel left unsent (with ``retry_errored``, the
        errored requests too; with ``expires_in_s``, the expired ones, with a new expiry that
        far from now); returns how many. An expired batch needs ``expires_in_s``."""
        states = ["canceled", *(["errored"] if retry_errored else [])]
        new_expiry = None
        if expires_in_s is not None:
            _check_positive(expires_in_s, "expires_in_s")
            new_expiry = _now() + timedelta(seconds=expires_in_s)
            states.append("expired")
        store = self._store()
        batch = store.batches.get(batch_id)
        if new_expiry is None and batch.expires_at <= _now():
            raise BatchStateError(
                f"batch {batch_id} expired at {batch.expires_at:%Y-%m-%d %H:%M UTC}; pass "
                "--expires-in 24h (or another duration) to give it more time",
                batch_id=batch_id,
            )
        return store.lifecycle.requeue(batch_id, states=states, now=_now(), expires_at=new_expiry)

    def resume(
        self,
        batch_id: str,
        *,
        retry_errored: bool = False,
        expires_in_s: float | None = None,
        endpoint: str | None = None,
        lane: str | None = None,
        limits: Limits | None = None,
        endpoint_limits: Limits | None = None,
        max_concurrency: int | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        output_reservation: Literal["learned", "max_tokens"] = "learned",
        burst_s: float | None = None,
        slow_start: bool = True,
        count_tokens: bool = False,
        max_cost_usd: float | None = None,
        hold_unpriced: bool = False,
        max_runtime_s: float | None = None,
        poll_interval_s: float = 30.0,
        lock: LockMode = "exclusive",
        on_event: Callable[[RunEvent], None] | None = None,
        progress_interval_s: float | None = None,
        stop_on_signals: bool = True,
        on_session: Callable[[RunSession], None] | None = None,
        notify_url: str | None = None,
        processes: int | Literal["auto"] = 1,
        progress: bool | None = None,
        progress_stream: IO[str] | None = None,
    ) -> RunResult:
        """:meth:`requeue`, then :meth:`run` the batch (the other arguments as for run)."""
        self.requeue(batch_id, retry_errored=retry_errored, expires_in_s=expires_in_s)
        return self.run(
            batch_id,
            endpoint=endpoint,
            lane=lane,
            limits=limits,
            endpoint_limits=endpoint_limits,
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            output_reservation=output_reservation,
            burst_s=burst_s,
            slow_start=slow_start,
            count_tokens=count_tokens,
            max_cost_usd=max_cost_usd,
            hold_unpriced=hold_unpriced,
            max_runtime_s=max_runtime_s,
            poll_interval_s=poll_interval_s,
            lock=lock,
            on_event=on_event,
            progress_interval_s=progress_interval_s,
            stop_on_signals=stop_on_signals,
            on_session=on_session,
            notify_url=notify_url,
            processes=processes,
            progress=progress,
            progress_stream=progress_stream,
        )

    def delete(self, batch_id: str) -> None:
        """Delete an ended batch with its requests and results (as Anthropic's batches: a
        batch that has not ended must be canceled first)."""
        self._store().lifecycle.delete(batch_id)

    def prune(
        self, *, older_than_s: float | None = None, reclaim_space: bool = True
    ) -> builtins.list[str]:
        """Delete every batch that ended more than ``older_than_s`` ago (default: the config
        file's ``retention``), in one transaction; then, on SQLite, give the space back to
        the file system (``reclaim_space``). Returns the deleted batches' ids."""
        if older_than_s is None:
            older_than_s = self.settings().retention_s
        if older_than_s is None:
            raise ConfigError(
                "say how old an ended batch must be to go: --older-than 30d (older_than_s from "
                'Python), or retention = "30d" in the config file'
            )
        _check_positive(older_than_s, "older_than_s")
        store = self._store()
        deleted = store.lifecycle.prune(_now() - timedelta(seconds=older_than_s))
        if deleted and reclaim_space:
            try:
                store.lifecycle.reclaim_space()
            except DatabaseError as exc:
                # The batches are gone; only the file stays as large as it was.
                log.warning("%s", exc.message)
        return deleted

    # -- results --------------------------------------------------------------------------

    def _result_rows(
        self, batch_id: str, *, partial: bool, only: str | None
    ) -> Iterator[ResultDetail]:
        check_export_arguments(only=only)
        store = self._store()
        batch = store.batches.get(batch_id)
        if batch.processing_status != "ended" and not partial:
            raise BatchStateError(
                f"batch {batch_id} has not ended ({batch.counts.processing:,} requests still "
                "processing); run it to the end, or pass --partial for the finished ones",
                batch_id=batch_id,
            )
        return store.results.iter_details(batch_id, only)

    def results(
        self, batch_id: str, *, partial: bool = False, only: ResultState | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """The batch's results in input order, as dicts in Anthropic's results format
        (``{"custom_id", "result": {"type", ...}}``), streamed from the database. A batch
        that has not ended needs ``partial=True`` (its finished requests only)."""
        from batchrun.export.anthropic import anthropic_lines

        rows = self._result_rows(batch_id, partial=partial, only=only)
        try:
            for line in anthropic_lines(rows):
                yield json.loads(line)
        finally:
            _close(rows)

    def export(
        self,
        batch_id: str,
        output: str | os.PathLike[str] | IO[Any],
        *,
        format: str = "anthropic",
        only: ResultState | None = None,
        partial: bool = False,
        csv_raw: bool = False,
        with_input: bool = False,
    ) -> int:
        """Write the batch's results in an export format (``anthropic``, ``flat``, ``csv``,
        or any registered one) to a file, atomically (a reader sees the old file or the
        new one, never half of one), or to an open stream; returns how many. CSV text
        cells that a spreadsheet would run as a formula get a leading ``'`` unless
        ``csv_raw`` (for programs that read the file). ``with_input`` (``flat``, ``csv``,
        ``parquet``; a batch submitted from a table): one row per input row, its columns
        then the result's and the answer's (see "Results joined to their rows" in the
        docs); a partial export keeps the open rows, with null results."""
        from batchrun.export.atomic import atomic_output
        from batchrun.export.formats import EXPORT_FORMATS

        check_export_arguments(format=format, only=only, with_input=with_input)
        chosen = EXPORT_FORMATS.get(format)
        if with_input:
            from batchrun.ops.joined import export_joined

            return export_joined(
                self._store(),
                batch_id,
                self.prices(),
                output,
                format=format,
                partial=partial,
                csv_raw=csv_raw,
            )
        write = chosen.writer(raw=csv_raw)
        rows = self._result_rows(batch_id, partial=partial, only=only)
        try:
            prices = self.prices() if chosen.uses_prices else _no_prices()
            if isinstance(output, str | os.PathLike):
                with atomic_output(output, binary=chosen.binary) as stream:
                    return write(rows, stream, prices)
            return write(rows, output, prices)
        finally:
            _close(rows)

    def results_table(
        self, batch_id: str, *, with_input: bool = True, partial: bool = False
    ) -> Any:
        """The batch's results as a ``pyarrow.Table``, in input order: with ``with_input``
        (a batch submitted from a table) the columns of ``results --with-input --format
        parquet``, one row per input row; without, the flat export's columns. ``.to_pandas()``
        makes it a DataFrame (or see `results_frame`). MissingExtraError without pyarrow."""
        if with_input:
            from batchrun.ops.joined import joined_table

            return joined_table(self._store(), batch_id, self.prices(), partial=partial)
        from batchrun.export.parquet import flat_table

        rows = self._result_rows(batch_id, partial=partial, only=None)
        try:
            return flat_table(rows, self.prices())
        finally:
            _close(rows)

    def results_frame(
        self, batch_id: str, *, with_input: bool = True, partial: bool = False
    ) -> Any:
        """`results_table` as a ``pandas.DataFrame``; MissingExtraError without pandas or
        pyarrow (pip install 'batchrun-llm[pandas]')."""
        import importlib

        try:
            importlib.import_module("pandas")
        except ImportError:
            raise MissingExtraError(
                "results_frame needs pandas: pip install pandas (or 'batchrun-llm[pandas]')",
                module="pandas",
            ) from None
        return self.results_table(batch_id, with_input=with_input, partial=partial).to_pandas()

    def parsed(
        self, batch_id: str, *, model: type[M], partial: bool = False
    ) -> Generator[tuple[dict[str, Any], M | None], None, None]:
        """``(row, answer)`` for each input row of a batch submitted from a table, in input
        order: the row as a dict of its columns, and its answer as an instance of ``model``
        (a Pydantic model class), or None when the request failed, is not finished, or its
        answer does not match the schema or the model."""
        from batchrun.ops.joined import parsed_rows

        return parsed_rows(self._store(), batch_id, self.prices(), model, partial=partial)

    # -- running --------------------------------------------------------------------------

    def run(
        self,
        *batch_ids: str,
        endpoint: str | None = None,
        lane: str | None = None,
        limits: Limits | None = None,
        endpoint_limits: Limits | None = None,
        max_concurrency: int | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        output_reservation: Literal["learned", "max_tokens"] = "learned",
        burst_s: float | None = None,
        slow_start: bool = True,
        count_tokens: bool = False,
        max_cost_usd: float | None = None,
        hold_unpriced: bool = False,
        max_runtime_s: float | None = None,
        forever: bool = False,
        poll_interval_s: float = 30.0,
        lock: LockMode = "exclusive",
        on_event: Callable[[RunEvent], None] | None = None,
        progress_interval_s: float | None = None,
        stop_on_signals: bool = True,
        on_session: Callable[[RunSession], None] | None = None,
        notify_url: str | None = None,
        processes: int | Literal["auto"] = 1,
        progress: bool | None = None,
        progress_stream: IO[str] | None = None,
    ) -> RunResult:
        """Send the queued requests of these batches (every batch with queued work when none
        is named) and record every response; returns when no work is left (or, with
        ``forever``, when stopped). Arguments as for :meth:`arun`; Ctrl-C and SIGTERM stop
        it gracefully unless ``stop_on_signals=False``."""
        work = self.arun(
            *batch_ids,
            endpoint=endpoint,
            lane=lane,
            limits=limits,
            endpoint_limits=endpoint_limits,
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            output_reservation=output_reservation,
            burst_s=burst_s,
            slow_start=slow_start,
            count_tokens=count_tokens,
            max_cost_usd=max_cost_usd,
            hold_unpriced=hold_unpriced,
            max_runtime_s=max_runtime_s,
            forever=forever,
            poll_interval_s=poll_interval_s,
            lock=lock,
            on_event=on_event,
            progress_interval_s=progress_interval_s,
            stop_on_signals=stop_on_signals,
            on_session=on_session,
            notify_url=notify_url,
            processes=processes,
            progress=progress,
            progress_stream=progress_stream,
        )
        return _blocking(work, "run", "arun")

    async def arun(
        self,
        *batch_ids: str,
        endpoint: str | None = None,
        lane: str | None = None,
        limits: Limits | None = None,
        endpoint_limits: Limits | None = None,
        max_concurrency: int | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        output_reservation: Literal["learned", "max_tokens"] = "learned",
        burst_s: float | None = None,
        slow_start: bool = True,
        count_tokens: bool = False,
        max_cost_usd: float | None = None,
        hold_unpriced: bool = False,
        max_runtime_s: float | None = None,
        forever: bool = False,
        poll_interval_s: float = 30.0,
        lock: LockMode = "exclusive",
        on_event: Callable[[RunEvent], None] | None = None,
        progress_interval_s: float | None = None,
        stop_on_signals: bool = False,
        on_session: Callable[[RunSession], None] | None = None,
        notify_url: str | None = None,
        processes: int | Literal["auto"] = 1,
        progress: bool | None = None,
        progress_stream: IO[str] | None = None,
    ) -> RunResult:
        """Run batches on the caller's event loop; see :meth:`run`.

        - ``limits``: per-minute limits by dimension name (``{"rpm": 600, "tpm": 60_000}``;
          ``itpm``, ``otpm``...), per model (or family), for every model, replacing the
          endpoints' own; None for a dimension: no limit. A name that is not a dimension is a
          ConfigError naming them. ``--rpm`` on the command line.
        - ``endpoint_limits``: the same, across all the models of each endpoint together
          (a gateway key's RPM, a workspace-wide cap), replacing the endpoints'
          ``endpoint_limits`` tables; every request takes from both. ``--endpoint-rpm``.
        - ``endpoint``: move the named batches' remaining requests there, for good.
        - ``lane``: send the batches' queued requests in this lane (``realtime``, ``batch``
          or ``auto``) from now on.
        - ``max_cost_usd``: a budget per batch, stored; a batch that would pass it pauses.
          A batch with queued requests of a model without a price is refused
          (UnpricedModelsError, exit code 2: nothing stored or sent) unless
          ``hold_unpriced``: then those requests are held, unsent, and the rest run.
        - ``max_runtime_s``: stop claiming after this long and let what is in flight finish.
        - ``slow_start``: with nothing configured, announced or learned for an endpoint ×
          model, start at 60 requests a minute and grow while answers succeed (see "Limits
          nobody told batchrun" in the docs); False sends at once, unpaced until the first
          429 (a server known to take everything: your own gateway, a load test).
        - ``forever``: look for new work every ``poll_interval_s`` until stopped.
        - ``lock``: on SQLite, ``exclusive`` raises RunLockedError when another run holds the
          database, ``wait`` waits for it, ``share`` works alongside it.
        - ``on_event`` gets what the run has to say (notes, progress every
          ``progress_interval_s``, each pass's result).
        - ``on_session`` gets the run's :class:`~batchrun.ops.session.RunSession` once it
          holds the run lock, before it sends, for a host that watches the run from another
          thread: its :meth:`~batchrun.ops.session.RunSession.counters` (the 429s, which
          the database does not keep) are what ``run --metrics-port`` serves beside the
          database's numbers. The run itself serves nothing: the metrics server belongs to
          the layer above this API (``batchrun.server.run_metrics``), so the CLI starts it,
          hands it the session's counters through this hook, and stops it after the run.
        - ``notify_url``: a webhook (http or https) that gets a small JSON document when a
          batch ends, is canceled, expires, pauses or is interrupted (see "Notifications" in
          the docs); delivery is tried a few seconds and never fails the run. None: the
          config file's ``[notify]``; ``""``: none, whatever the file says.
        - ``processes``: worker processes (default 1; ``"auto"``: one per usable core), each
          a fresh interpreter running this run on the same database with the same options,
          sharing the run lock and every limit (the rate buckets live in the database); the
          run still reports as one: one progress, one result, each note once, the webhook
          notices sent once. Not with ``forever`` or ``on_session`` (UsageError). Ctrl-C
          and SIGTERM reach every worker; a worker that dies unfinished fails the run with
          WorkerProcessError once the others are done (see :mod:`batchrun.ops.processes`).
        - ``progress``: a live display (done/total, rate against the binding limit, ETA,
          cost): None (the default) shows it only in a notebook (an IPython kernel), as a
          widget with ipywidgets, else as text lines on stderr; True shows it anywhere;
          False never. ``progress_stream``: write it as text lines there instead (implies
          ``progress`` unless False). It is fed every ``progress_interval_s`` (1 s unless
          given), beside ``on_event``. See :mod:`batchrun.ops.views.notebook`.

        Returns the :class:`~batchrun.ops.session.RunResult`: the exit code the CLI would
        give, and the last pass's batches, counts, tokens and costs.
        """
        from batchrun.limits.buckets import DEFAULT_BURST_S
        from batchrun.limits.keyrecord import START_PER_MIN
        from batchrun.limits.limiter import LimiterSettings
        from batchrun.ops.runlock import run_lock
        from batchrun.ops.session import Note, RunOptions, RunSession

        count = check_run_arguments(
            batch_ids,
            endpoint=endpoint,
            forever=forever,
            notify_url=notify_url,
            processes=processes,
        )
        if count > 1 and on_session is not None:
            raise UsageError(
                argument="on_session",
                problem="watches one session; a run of several processes has one per process",
            )
        if lock not in ("exclusive", "wait", "share"):
            raise ConfigError(f"lock must be exclusive, wait or share, not {lock!r}")
        from batchrun.ops.views.notebook import NOTEBOOK_INTERVAL_S, progress_display, with_display

        if (display := progress_display(progress, progress_stream)) is not None:
            on_event = with_display(on_event, display)
            progress_interval_s = progress_interval_s or NOTEBOOK_INTERVAL_S
        known = self.endpoints()
        notifier = self._notifier(notify_url)
        options = RunOptions(
            batch_ids=tuple(batch_ids),
            target=known.check(endpoint) if endpoint is not None else None,
            lane=lane,
            max_cost_usd=max_cost_usd,
            hold_unpriced=hold_unpriced,
            max_runtime_s=max_runtime_s,
            forever=forever,
            poll_interval_s=poll_interval_s,
            overrides=_limits(limits),
            endpoint_overrides=_limits(endpoint_limits, "endpoint_limits"),
            limiter_settings=LimiterSettings(
                burst_s=burst_s or DEFAULT_BURST_S,
                output_reservation=output_reservation,
                start_per_min=START_PER_MIN if slow_start else None,
            ),
            timeout_s=timeout_s,
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            count_tokens=count_tokens,
            progress_interval_s=progress_interval_s,
            stop_on_signals=stop_on_signals,
        )
        prices = self.prices()

        def waiting(text: str) -> None:
            if on_event is not None:
                on_event(Note(text))

        async with run_lock(
            self.database_url, wait=lock == "wait", share=lock == "share", on_wait=waiting
        ):
            store = await _off_loop(self._store)
            if count > 1:
                from batchrun.ops.processes import ProcessRun

                # The workers share this run's lock: they take none of their own.
                return await ProcessRun(
                    self.database_url,
                    store,
                    count=count,
                    known=known,
                    prices=prices,
                    env=self._env,
                    options=options,
                    on_event=on_event,
                    notifier=notifier,
                ).run()
            session = RunSession(
                store,
                known=known,
                prices=prices,
                env=self._env,
                options=options,
                on_event=on_event,
                notifier=notifier,
            )
            if on_session is not None:
                on_session(session)
            return await session.run()

    def _notifier(self, notify_url: str | None) -> WebhookNotifier | None:
        """The run's webhook notifier: ``notify_url``, else the config file's (see arun)."""
        from batchrun.config.file import notify_url_of

        if notify_url is None:
            notify_url = notify_url_of(self.settings(), self._env)
        if not notify_url:
            return None
        from batchrun.transport.notify import WebhookNotifier

        return WebhookNotifier(notify_url)

    # -- the async twins of the rest ------------------------------------------------------

    async def asubmit(
        self,
        requests: Requests,
        *,
        endpoint: str | None = None,
        name: str | None = None,
        model: str | None = None,
        expires_in_s: float | None = None,
        skip_invalid: bool = False,
        max_cost_usd: float | None = None,
        max_requests: int | None = None,
        max_file_bytes: int | None = None,
        on_skipped: Callable[[str], None] | None = None,
        lane: str = Lane.REALTIME,
        reuse: bool = False,
        hold_unpriced: bool = False,
        repair: int | None = None,
        cache_ttl: str | None = None,
    ) -> BatchObject:
        """:meth:`submit` off the event loop."""
        return await _off_loop(
            self.submit,
            requests,
            endpoint=endpoint,
            name=name,
            model=model,
            expires_in_s=expires_in_s,
            skip_invalid=skip_invalid,
            max_cost_usd=max_cost_usd,
            max_requests=max_requests,
            max_file_bytes=max_file_bytes,
            on_skipped=on_skipped,
            lane=lane,
            reuse=reuse,
            hold_unpriced=hold_unpriced,
            repair=repair,
            cache_ttl=cache_ttl,
        )

    async def astatus(self, batch_id: str) -> BatchStatus:
        """:meth:`status` off the event loop."""
        return await _off_loop(self.status, batch_id)

    async def areport_html(self, batch_id: str) -> str:
        """:meth:`report_html` off the event loop."""
        return await _off_loop(self.report_html, batch_id)

    async def alist(self) -> builtins.list[BatchObject]:
        """:meth:`list` off the event loop."""
        return await _off_loop(self.list)

    async def acancel(self, batch_id: str) -> BatchObject:
        """:meth:`cancel` off the event loop."""
        return await _off_loop(self.cancel, batch_id)

    async def aresume(
        self,
        batch_id: str,
        *,
        retry_errored: bool = False,
        expires_in_s: float | None = None,
        endpoint: str | None = None,
        lane: str | None = None,
        limits: Limits | None = None,
        endpoint_limits: Limits | None = None,
        max_concurrency: int | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        output_reservation: Literal["learned", "max_tokens"] = "learned",
        burst_s: float | None = None,
        slow_start: bool = True,
        count_tokens: bool = False,
        max_cost_usd: float | None = None,
        hold_unpriced: bool = False,
        max_runtime_s: float | None = None,
        poll_interval_s: float = 30.0,
        lock: LockMode = "exclusive",
        on_event: Callable[[RunEvent], None] | None = None,
        progress_interval_s: float | None = None,
        stop_on_signals: bool = False,
        on_session: Callable[[RunSession], None] | None = None,
        notify_url: str | None = None,
        processes: int | Literal["auto"] = 1,
        progress: bool | None = None,
        progress_stream: IO[str] | None = None,
    ) -> RunResult:
        """:meth:`resume` on the caller's event loop."""
        await _off_loop(
            self.requeue, batch_id, retry_errored=retry_errored, expires_in_s=expires_in_s
        )
        return await self.arun(
            batch_id,
            endpoint=endpoint,
            lane=lane,
            limits=limits,
            endpoint_limits=endpoint_limits,
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            output_reservation=output_reservation,
            burst_s=burst_s,
            slow_start=slow_start,
            count_tokens=count_tokens,
            max_cost_usd=max_cost_usd,
            hold_unpriced=hold_unpriced,
            max_runtime_s=max_runtime_s,
            poll_interval_s=poll_interval_s,
            lock=lock,
            on_event=on_event,
            progress_interval_s=progress_interval_s,
            stop_on_signals=stop_on_signals,
            on_session=on_session,
            notify_url=notify_url,
            processes=processes,
            progress=progress,
            progress_stream=progress_stream,
        )

    async def aresults(
        self, batch_id: str, *, partial: bool = False, only: ResultState | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """:meth:`results` off the event loop, a chunk of rows at a time."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        # One thread reads the whole result set, so its database cursor stays on it.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrun-results") as pool:
            loop = asyncio.get_running_loop()
            lines = await loop.run_in_executor(
                pool, lambda: self.results(batch_id, partial=partial, only=only)
            )
            try:
                while chunk := await loop.run_in_executor(pool, _take, lines):
                    for line in chunk:
                        yield line
            finally:
                await loop.run_in_executor(pool, lines.close)

    async def aexport(
        self,
        batch_id: str,
        output: str | os.PathLike[str] | IO[Any],
        *,
        format: str = "anthropic",
        only: ResultState | None = None,
        partial: bool = False,
        csv_raw: bool = False,
        with_input: bool = False,
    ) -> int:
        """:meth:`export` off the event loop."""
        return await _off_loop(
            self.export,
            batch_id,
            output,
            format=format,
            only=only,
            partial=partial,
            csv_raw=csv_raw,
            with_input=with_input,
        )


def check_run_arguments(
    batch_ids: Sequence[str],
    *,
    endpoint: str | None,
    forever: bool,
    notify_url: str | None,
    processes: int | str = 1,
) -> int:
    """The rules between :meth:`Client.run`'s arguments, in one place for the Client and the
    CLI (which checks them before it looks anything up): UsageError naming the argument.
    A ``notify_url`` is never quoted: it may hold a token. Returns the number of worker
    processes ``processes`` asks for."""
    from batchrun.ops.processes import process_count

    count = process_count(processes)
    if forever and count > 1:
        raise UsageError(
            argument="forever",
            problem="runs in one process; for several, start several `batchrun run --forever "
            "--share` (on Postgres, on any number of hosts)",
        )
    if endpoint is not None and not batch_ids:
        raise UsageError(argument="endpoint", problem="name the batches to move")
    if forever and batch_ids:
        raise UsageError(
            argument="forever",
            problem="runs every batch with queued work; it takes no batch ids",
        )
    if notify_url:
        from batchrun.config.file import notify_url_problem

        if problem := notify_url_problem(notify_url):
            raise UsageError(argument="notify_url", problem=problem)
    return count


def check_export_arguments(
    *, format: str = "anthropic", only: str | None = None, with_input: bool = False
) -> None:
    """The rules of :meth:`Client.export`'s and :meth:`Client.results`' arguments, in one
    place for the Client and the CLI (which checks them before it looks anything up):
    UsageError naming the argument (the format registry words an unknown format)."""
    from batchrun.export.formats import EXPORT_FORMATS
    from batchrun.export.joined_files import JOINED_FORMATS

    try:
        EXPORT_FORMATS.get(format)
    except ConfigError as exc:
        raise UsageError(argument="format", problem=exc.message) from None
    if only is not None and only not in RESULT_STATES:
        raise UsageError(
            argument="only", problem=f"{only!r} is not one of {', '.join(RESULT_STATES)}"
        )
    if with_input and format not in JOINED_FORMATS:
        raise UsageError(
            argument="format",
            problem=f"{format!r} cannot hold the input rows; with_input (--with-input) "
            f"writes {', '.join(JOINED_FORMATS)}",
        )
    if with_input and only is not None:
        raise UsageError(
            argument="only",
            problem="with_input (--with-input) writes every input row; filter on result_type "
            "in the joined file instead",
        )


def _take(lines: Generator[dict[str, Any], None, None]) -> builtins.list[dict[str, Any]]:
    chunk = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= _ASYNC_RESULT_CHUNK:
            break
    return chunk


def _limits(values: Mapping[str, float | None] | None, argument: str = "") -> RateLimits:
    """Limits by dimension name as RateLimits; ConfigError naming the known ones for a name
    that is not a limit (or an option misspelt), after ``argument`` when given."""
    from batchrun.limits.dimensions import RateLimits

    try:
        return RateLimits(dict(values or {}))
    except ValueError as exc:
        raise ConfigError(f"{argument}: {exc}" if argument else str(exc)) from None


def _repair_limit(given: int | None, template: int | None) -> int:
    """A batch's repair limit: the submit's ``repair``, else the template's, else the
    default; ConfigError for a number below 0."""
    from batchrun.records import DEFAULT_REPAIR_LIMIT

    limit = given if given is not None else template
    if limit is None:
        return DEFAULT_REPAIR_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(
            f"repair must be a whole number of repair sends, 0 or more, not {limit!r}"
        )
    return limit


def _check_cache_ttl(value: str, where: str) -> str:
    if value not in tuple(CacheTtl):
        raise ConfigError(
            f"{where}: unknown cache TTL policy {value!r}; use one of {', '.join(CacheTtl)}"
        )
    return value


def _submit_arguments(
    expires_in_s: float | None, max_cost_usd: float | None, name: str | None
) -> float:
    """The expiry in seconds (default 24 h) once a submit's arguments are checked;
    ConfigError naming the first that is wrong."""
    from batchrun.input.ingest import DEFAULT_EXPIRES_IN_S

    if expires_in_s is None:
        expires_in_s = DEFAULT_EXPIRES_IN_S
    _check_positive(expires_in_s, "expires_in_s")
    if max_cost_usd is not None and not max_cost_usd >= 0:
        raise ConfigError(f"max_cost_usd must be 0 or more, not {max_cost_usd!r}")
    if name is not None and len(name) > MAX_NAME_CHARS:
        raise ConfigError(
            f"the batch name is {len(name):,} characters long; it can have at most {MAX_NAME_CHARS}"
        )
    return expires_in_s


def _check_positive(value: float, what: str) -> None:
    from batchrun.config.durations import MAX_DURATION_S

    if not 0 < value <= MAX_DURATION_S:
        raise ConfigError(
            f"{what} must be a positive number of seconds up to ten years, not {value!r}"
        )


def _no_prices() -> PriceTable:
    from batchrun.config.prices import PriceTable

    return PriceTable()


def _close(items: object) -> None:
    """End a streamed read now (its transaction), rather than when it is collected."""
    close = getattr(items, "close", None)
    if close is not None:
        close()


async def _off_loop(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` on a worker thread, so the caller's loop keeps going."""
    import asyncio

    return await asyncio.to_thread(function, *args, **kwargs)


def _blocking(work: Coroutine[Any, Any, T], name: str, async_name: str) -> T:
    """Run a coroutine to completion; a clear error inside a running event loop."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    work.close()
    raise BatchrunError(
        f"Client.{name}() cannot run inside a running event loop (a notebook, an async "
        f"task); use `await client.{async_name}(...)` there"
    )


def _now() -> datetime:
    return datetime.now(UTC)
