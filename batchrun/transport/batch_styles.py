"""The batch API styles registry: how each provider's batch API is called (paths, create
status, whether it lists batches, where it serves a batch's results). Kept apart from the
client (``transport.batch_api``) so the config file can check ``batch_api = "NAME"`` without
loading httpx."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from batchrun.registry import Registry


@dataclass(frozen=True)
class BatchApiStyle:
    """How one provider's batch API is called: the method, URL and query of each call."""

    name: str
    create_status: tuple[int, ...]
    can_list: bool
    retrieve: Callable[[str, str], tuple[str, dict[str, str]]]
    cancel: Callable[[str, str], str]
    # Where the endpoint itself serves an ended batch's results (used when the batch's
    # results_url names another origin: credentials never go there).
    results: Callable[[str, str], tuple[str, dict[str, str]]]
    # AIMLAPI answers the results on the retrieve URL once the batch has ended.
    results_on_retrieve: bool = False


def _path_join(collection: str, *parts: str) -> str:
    return "/".join([collection.rstrip("/"), *parts])


BATCH_API_STYLES: Registry[BatchApiStyle] = Registry(
    "batch API style",
    [
        BatchApiStyle(
            name="anthropic",
            create_status=(200, 201),
            can_list=True,
            retrieve=lambda url, batch_id: (_path_join(url, batch_id), {}),
            cancel=lambda url, batch_id: _path_join(url, batch_id, "cancel"),
            results=lambda url, batch_id: (_path_join(url, batch_id, "results"), {}),
        ),
        BatchApiStyle(
            name="aimlapi",
            create_status=(200, 201),
            can_list=False,
            retrieve=lambda url, batch_id: (url, {"batch_id": batch_id}),
            cancel=lambda url, batch_id: _path_join(url, "cancel", batch_id),
            results=lambda url, batch_id: (url, {"batch_id": batch_id}),
            results_on_retrieve=True,
        ),
    ],
)
