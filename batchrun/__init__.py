"""batchrun: a batch job runner for Anthropic-format Messages APIs."""

from __future__ import annotations

from batchrun.errors import BatchrunError

__version__ = "0.1.0"
__all__ = ["BatchrunError", "__version__"]
