"""batchrun: a batch job runner for Anthropic-format Messages APIs.

The public API is :class:`Client` (see :mod:`batchrun.client`), the errors it raises
(:class:`BatchrunError` and its subclasses, in :mod:`batchrun.errors`), every type it takes,
returns or hands to a callback (``RunResult``, ``BatchObject``, ``Limits``...) and
``__version__``: all of them importable from here and listed in ``__all__``. Import them from
here, not from the modules that define them: those are internal and may move (``_LAZY``
is the one place that says where each lives). ``Client`` and the types load on first use, so
``import batchrun`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from batchrun.errors import (
    AmbiguousBatchError,
    BatchNotFoundError,
    BatchrunError,
    BatchStateError,
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    ExitCode,
    InputFileError,
    MissingApiKeyError,
    MissingExtraError,
    RunLockedError,
    UnknownEndpointError,
    UnpricedModelsError,
    UsageError,
    WorkerProcessError,
)

if TYPE_CHECKING:
    from batchrun.client import Client, Limits, LockMode, ResultState
    from batchrun.config.file import Settings
    from batchrun.config.prices import CostTotal, PriceTable
    from batchrun.dispatch.counts import RunReport
    from batchrun.export.batch_object import BatchObject, BatchStatus, ProviderBatchModel
    from batchrun.input.frames import OutputSchema, TableData
    from batchrun.input.sources import Requests
    from batchrun.ops.monitor import ProgressSnapshot
    from batchrun.ops.planning import FilePlan, ModelPlan
    from batchrun.ops.run_types import (
        Note,
        PassFinished,
        PassResult,
        ProcessCounters,
        Progress,
        RunEvent,
        RunResult,
    )
    from batchrun.ops.session import RunSession
    from batchrun.ops.views.report.data import ReportData
    from batchrun.ops.waiting import WaitingBatch
    from batchrun.transport.endpoints import Endpoints

__version__ = "0.1.0"

# Where each name loaded on first use lives (the same as the imports above, which are for
# type checkers): the Client, and every type it takes, returns or hands to a callback.
_LAZY: dict[str, str] = {
    "BatchObject": "batchrun.export.batch_object",
    "BatchStatus": "batchrun.export.batch_object",
    "Client": "batchrun.client",
    "CostTotal": "batchrun.config.prices",
    "Endpoints": "batchrun.transport.endpoints",
    "FilePlan": "batchrun.ops.planning",
    "Lane": "batchrun.records",
    "Limits": "batchrun.client",
    "LockMode": "batchrun.client",
    "ModelPlan": "batchrun.ops.planning",
    "Note": "batchrun.ops.run_types",
    "OutputSchema": "batchrun.input.frames",
    "PassFinished": "batchrun.ops.run_types",
    "PassResult": "batchrun.ops.run_types",
    "PriceTable": "batchrun.config.prices",
    "ProcessCounters": "batchrun.ops.run_types",
    "Progress": "batchrun.ops.run_types",
    "ProgressSnapshot": "batchrun.ops.monitor",
    "ProviderBatchModel": "batchrun.export.batch_object",
    "ReportData": "batchrun.ops.views.report.data",
    "Requests": "batchrun.input.sources",
    "ResultState": "batchrun.client",
    "RunEvent": "batchrun.ops.run_types",
    "RunReport": "batchrun.dispatch.counts",
    "LearnedLimit": "batchrun.store.rates",
    "RunResult": "batchrun.ops.run_types",
    "RunSession": "batchrun.ops.session",
    "Settings": "batchrun.config.file",
    "TableData": "batchrun.input.frames",
    "WaitingBatch": "batchrun.ops.waiting",
}

__all__ = [
    "AmbiguousBatchError",
    "BatchNotFoundError",
    "BatchObject",
    "BatchStateError",
    "BatchStatus",
    "BatchrunError",
    "Client",
    "ConfigError",
    "CostTotal",
    "DatabaseError",
    "DatabaseUnavailableError",
    "Endpoints",
    "ExitCode",
    "FilePlan",
    "InputFileError",
    "Lane",
    "LearnedLimit",
    "Limits",
    "LockMode",
    "MissingApiKeyError",
    "MissingExtraError",
    "ModelPlan",
    "Note",
    "OutputSchema",
    "PassFinished",
    "PassResult",
    "PriceTable",
    "ProcessCounters",
    "Progress",
    "ProgressSnapshot",
    "ProviderBatchModel",
    "ReportData",
    "Requests",
    "ResultState",
    "RunEvent",
    "RunLockedError",
    "RunReport",
    "RunResult",
    "RunSession",
    "Settings",
    "TableData",
    "UnknownEndpointError",
    "UnpricedModelsError",
    "UsageError",
    "WaitingBatch",
    "WorkerProcessError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Loaded by name, so the layers below can import `batchrun` (for __version__) without
    # depending on the API above them, and `import batchrun` loads none of it.
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'batchrun' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
