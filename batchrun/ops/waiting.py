"""Why a batch cannot be sent from here (a key not set, an endpoint not defined): what
``submit`` warns about and a run reports, without the run's machinery (``submit`` imports
this, not :mod:`batchrun.ops.runner`, which brings the dispatcher and the HTTP stack)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from batchrun.errors import MissingApiKeyError
from batchrun.transport.endpoints import Endpoints, auth_headers


@dataclass(frozen=True)
class WaitingBatch:
    """A batch a run left waiting because its endpoint cannot be used here: a key or
    ``headers_env`` variable is not set, or the endpoint (or pool) is not defined (or, in a
    later pass of ``run --forever``, because its ``--max-cost`` cannot be kept: a model has
    no price). Nothing of it was sent and nothing errored; its requests stay queued, and are
    not paused in the database (a worker that has the key sends them). ``reason`` says what
    is wrong and the fix; ``variable`` is the variable that is not set (None: the endpoint
    is not defined)."""

    batch_id: str
    endpoint: str
    reason: str
    variable: str | None = None


def waiting_reason(
    batch_id: str,
    name: str,
    known: Endpoints,
    env: Mapping[str, str],
    *,
    also: Sequence[str] = (),
) -> WaitingBatch | None:
    """Why a batch on endpoint (or pool) ``name`` cannot be sent from here, or None when it
    can: the endpoint is not defined, or a variable of one of its endpoints (a pool's every
    member, and ``also``: the endpoints of its open provider batches) is not set."""
    defined = [*known.by_name, *known.pools]
    for wanted in (name, *also):
        if wanted not in known.by_name and wanted not in known.pools:
            where = f"in {known.config_path}" if known.config_path else "in any config file"
            return WaitingBatch(
                batch_id,
                name,
                f"{'its endpoint' if wanted == name else 'the endpoint of its provider batches'} "
                f"{wanted!r} is not defined {where} (defined: "
                f"{', '.join(sorted(defined))}); define it again, or move the batch with "
                f"`batchrun run {batch_id} --endpoint NAME`",
            )
    endpoints = {**known.members(name)}
    for other in also:
        endpoints.update(known.members(other))
    for endpoint in endpoints.values():
        try:
            auth_headers(endpoint, env)
        except MissingApiKeyError as exc:
            variable = exc.variable or "a variable"
            what = exc.what or f"a value of endpoint {endpoint.name!r}"
            return WaitingBatch(
                batch_id,
                name,
                f"{variable} is not set here ({what} is read from it); set it where the "
                "run starts (for cron: in the crontab or in the script it runs)",
                exc.variable,
            )
    return None
