"""batchrun: a batch job runner for Anthropic-format Messages APIs.

The public API is :class:`Client` (see :mod:`batchrun.client`), the errors it raises
(:class:`BatchrunError` and its subclasses, in :mod:`batchrun.errors`) and ``__version__``.
``Client`` is imported on first use, so ``import batchrun`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from batchrun.errors import (
    BatchNotFoundError,
    BatchrunError,
    BatchStateError,
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    ExitCode,
    InputFileError,
    MissingApiKeyError,
    RunLockedError,
    UnknownEndpointError,
    UnpricedModelsError,
)

if TYPE_CHECKING:
    from batchrun.client import Client

__version__ = "0.1.0"
__all__ = [
    "BatchNotFoundError",
    "BatchStateError",
    "BatchrunError",
    "Client",
    "ConfigError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "ExitCode",
    "InputFileError",
    "MissingApiKeyError",
    "RunLockedError",
    "UnknownEndpointError",
    "UnpricedModelsError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        # Loaded by name, so the layers below can import `batchrun` (for __version__) without
        # depending on the API above them.
        return import_module("batchrun.client").Client
    raise AttributeError(f"module 'batchrun' has no attribute {name!r}")
