"""Where a command takes a batch, what a person may type: the batch id, a unique prefix of it
(with or without ``msgbatch_``), the batch's ``--name``, or ``last`` (the newest batch). One
resolver (:func:`resolve_batch_id`) serves every command that takes a batch id, as the
callback of :func:`batch_argument`. Also the shell completion of batch ids, endpoint names
and choices (``batchrun --install-completion`` installs it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from batchrun.errors import AmbiguousBatchError, BatchNotFoundError

if TYPE_CHECKING:
    from batchrun.client import Client
    from batchrun.export.batch_object import BatchObject

# A complete id as `submit` makes it: taken as it is, without reading the batch list.
FULL_ID = re.compile(r"msgbatch_[A-Za-z0-9]{24}")
ID_PREFIX = "msgbatch_"
LAST = "last"
# How many matches an ambiguous prefix or name lists.
MAX_LISTED = 8
# How many batches completion offers (the newest).
MAX_COMPLETED = 200

BATCH_HELP = "The batch: its id, a unique prefix of the id, its --name, or `last` (the newest)."


def match_batch(ref: str, batches: Sequence[BatchObject]) -> str:
    """The id of the one batch of ``batches`` (newest first) that ``ref`` names: an id, then
    ``last``, then a name, then an id prefix. BatchNotFoundError when none does,
    AmbiguousBatchError listing them when several do."""
    ref = ref.strip()
    if any(batch.id == ref for batch in batches):
        return ref
    if ref == LAST:
        if not batches:
            raise BatchNotFoundError(
                "no batch yet, so no `last`; `batchrun submit FILE` stores one", batch_id=ref
            )
        return batches[0].id
    named = [batch for batch in batches if batch.name == ref]
    if named:
        return _one(ref, named, "are named", "name it by its id")
    prefixed = [
        batch
        for batch in batches
        if ref and (batch.id.startswith(ref) or batch.id.startswith(ID_PREFIX + ref))
    ]
    if prefixed:
        return _one(ref, prefixed, "have ids starting with", "give more of the id")
    raise BatchNotFoundError(
        f"no batch {ref!r} in this database (not an id, a prefix of one, a name or `last`); "
        "`batchrun list` shows its batches",
        batch_id=ref,
    )


def _one(ref: str, found: Sequence[BatchObject], how: str, fix: str) -> str:
    if len(found) == 1:
        return found[0].id
    listed = ", ".join(_described(batch) for batch in found[:MAX_LISTED])
    more = f" and {len(found) - MAX_LISTED:,} more" if len(found) > MAX_LISTED else ""
    raise AmbiguousBatchError(
        f"{len(found):,} batches {how} {ref!r}: {listed}{more}; {fix}",
        batch_id=ref,
        matches=[batch.id for batch in found],
    )


def _described(batch: BatchObject) -> str:
    created = batch.created_at.strftime("%Y-%m-%d %H:%M")
    name = f" {batch.name!r}" if batch.name else ""
    return f"{batch.id}{name} ({created})"


def resolve_batch_id(client: Client, ref: str) -> str:
    """The batch id ``ref`` stands for (see :func:`match_batch`); a complete id is taken as
    it is, and the command says if no such batch exists."""
    if FULL_ID.fullmatch(ref.strip()):
        return ref.strip()
    return match_batch(ref, client.list())


def resolve_batch_ids(client: Client, refs: Sequence[str]) -> list[str]:
    """:func:`resolve_batch_id` of each of ``refs``, reading the batch list at most once."""
    if all(FULL_ID.fullmatch(ref.strip()) for ref in refs):
        return [ref.strip() for ref in refs]
    batches = client.list()
    return [match_batch(ref, batches) for ref in refs]


def _resolve(ctx: typer.Context, value: Any) -> Any:
    """The argument's callback: the value typed, as the batch id it stands for."""
    if ctx.resilient_parsing or value is None:
        return value
    from batchrun.cli.context import client_of

    return resolve_batch_id(client_of(ctx), value)


def batch_argument(help: str = BATCH_HELP, *, resolve: bool = True) -> Any:
    """A batch id argument, completed from the database, and resolved by
    :func:`resolve_batch_id` as it is parsed (``resolve``; a command taking several calls
    :func:`resolve_batch_ids` itself, after its own checks of the command line)."""
    return typer.Argument(
        help=help,
        callback=_resolve if resolve else None,
        autocompletion=complete_batch_ids,
        metavar="BATCH_ID",
        show_default=False,
    )


# -- shell completion -------------------------------------------------------------------------
# Completion runs without the app's callback (no client is made): it makes its own from the
# global options given so far, and offers nothing rather than fail.


def _completion_client(ctx: typer.Context, *, database: bool) -> Client | None:
    """A client from the global options typed so far; None when it cannot be made, or
    (``database``) when its SQLite file does not exist: completion must not create one."""
    from batchrun.client import Client

    params = ctx.find_root().params
    try:
        client = Client(params.get("db"), config=params.get("config"))
    except Exception:
        return None
    url = client.database_url
    path = url.removeprefix("sqlite:///")
    if database and url.startswith("sqlite:///") and not Path(path).is_file():
        return None
    return client


def complete_batch_ids(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Batch ids (and names, and ``last``) starting with what was typed, newest first."""
    client = _completion_client(ctx, database=True)
    if client is None:
        return []
    try:
        batches = client.list()[:MAX_COMPLETED]
    except Exception:
        return []
    finally:
        client.close()
    offered: list[tuple[str, str]] = []
    if LAST.startswith(incomplete) and batches:
        offered.append((LAST, f"the newest batch, {batches[0].id}"))
    for batch in batches:
        about = f"{batch.name or 'no name'}, {batch.processing_status}"
        if batch.id.startswith(incomplete) or batch.id.startswith(ID_PREFIX + incomplete):
            offered.append((batch.id, about))
        elif batch.name and batch.name.startswith(incomplete):
            offered.append((batch.name, batch.id))
    return offered


def complete_endpoints(ctx: typer.Context, incomplete: str) -> list[str]:
    """Endpoint and pool names (built in and from the config file) starting with what was
    typed."""
    client = _completion_client(ctx, database=False)
    if client is None:
        return []
    try:
        endpoints = client.endpoints()
        names = [*endpoints.by_name, *endpoints.pools]
    except Exception:
        return []
    finally:
        client.close()
    return sorted(name for name in names if name.startswith(incomplete))


def complete_choices(choices: Callable[[], Iterable[str]]) -> Callable[[str], list[str]]:
    """Completion of a fixed set of values (export formats, result states)."""

    def complete(incomplete: str) -> list[str]:
        return [choice for choice in choices() if choice.startswith(incomplete)]

    return complete
