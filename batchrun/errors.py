"""Errors that reach the user.

Every error a user can cause or fix derives from :class:`BatchrunError`; the CLI prints its
message on one line and exits non-zero. Anything else that escapes is a bug and keeps its
traceback. The tree::

    BatchrunError
    ├── InputFileError          a request file cannot be read or has invalid lines
    ├── ConfigError             a setting, flag or environment variable is wrong or missing
    │   └── MissingApiKeyError  the endpoint's key variable is not set
    ├── UnknownEndpointError    a batch or flag names an endpoint batchrun does not know
    ├── BatchNotFoundError      no batch has that id
    ├── BatchStateError         the batch is in a state that does not allow the command
    └── DatabaseError           the database cannot be opened, migrated or written
        └── DatabaseUnavailableError  the connection was lost (worth retrying)

Each subclass's docstring is its default message, so ``raise BatchNotFoundError()`` already
says something useful; callers pass a more specific message when they know more.
"""

from __future__ import annotations


class BatchrunError(Exception):
    """batchrun failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class InputFileError(BatchrunError):
    """The request file cannot be used."""


class ConfigError(BatchrunError):
    """A setting is invalid."""


class MissingApiKeyError(ConfigError):
    """No API key is set for this endpoint."""


class UnknownEndpointError(BatchrunError):
    """No endpoint has that name."""


class BatchNotFoundError(BatchrunError):
    """No batch has that id; `batchrun list` shows the batches in this database."""


class BatchStateError(BatchrunError):
    """The batch is not in a state that allows this."""


class DatabaseError(BatchrunError):
    """The database cannot be used."""


class DatabaseUnavailableError(DatabaseError):
    """The connection to the database was lost; it may come back."""
