"""Errors that reach the user, and the exit codes of the ``batchrun`` command.

Every error a user can cause or fix derives from :class:`BatchrunError`; the CLI prints its
message on one line and exits with the class's :attr:`~BatchrunError.exit_code`. Anything
else that escapes is a bug and keeps its traceback. The tree::

    BatchrunError                   exit 1 unless noted
    ├── InputFileError              a request file cannot be read or has invalid lines
    ├── ConfigError                 a setting, flag or environment variable is wrong or missing
    │   ├── MissingApiKeyError      the endpoint's key variable is not set
    │   ├── UnpricedModelsError     a budget for models without a price (exit 2)
    │   ├── MissingExtraError       an optional extra (pyarrow, pandas) is not installed
    │   └── UsageError              arguments that do not go together (exit 2)
    ├── UnknownEndpointError        a batch or flag names an endpoint batchrun does not know
    ├── BatchNotFoundError          no batch has that id
    │   └── AmbiguousBatchError     a prefix or name matches several batches
    ├── BatchStateError             the batch is in a state that does not allow the command
    ├── DatabaseError               the database cannot be opened, migrated or written
    │   └── DatabaseUnavailableError  the connection was lost (worth retrying)
    ├── RunLockedError              another run holds the SQLite database (exit 6)
    └── WorkerProcessError          a worker process of `run --processes` ended unfinished

Each subclass's docstring is its default message, so ``raise BatchNotFoundError()`` already
says something useful; callers pass a more specific message when they know more.

:data:`EXIT_CODES` is the one list of exit codes and what they mean; the docs' table is
tested against it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime


class ExitCode(IntEnum):
    """How ``batchrun`` ends; :data:`EXIT_CODES` says what each means."""

    OK = 0
    ERROR = 1
    USAGE = 2
    ERRORED_RESULTS = 3
    PAUSED = 4
    TIME_LIMIT = 5
    LOCKED = 6
    CANCELED = 7
    INTERRUPTED = 130


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "done: every request finished and none errored",
    ExitCode.ERROR: (
        "an error you can fix (bad request file, bad config file, unknown batch or endpoint, "
        "missing key, database problem), explained on stderr, one line per problem; or a "
        "worker process of `run --processes` ended without finishing"
    ),
    ExitCode.USAGE: (
        "wrong command-line usage, or a budget (`--max-cost`) for a model that has no price "
        "(nothing was stored or sent; price it in the config file, or `--hold-unpriced`)"
    ),
    ExitCode.ERRORED_RESULTS: "`run` finished, but some requests ended `errored`",
    ExitCode.PAUSED: (
        "`run` paused a batch: the endpoint rejected the credentials, billing or spend limit, "
        "or the batch's budget (`--max-cost`) would be passed; or it left a batch waiting, "
        "nothing of it sent, because its endpoint cannot be used here (its key or a "
        "`headers_env` variable is not set, or the endpoint is not defined) while the other "
        "batches ran; or it holds requests whose model has no price (`--hold-unpriced`). Its "
        "requests stay queued; fix the cause (or raise the budget) and run it again."
    ),
    ExitCode.TIME_LIMIT: (
        "`run` stopped at its time limit (`--max-runtime`) with work left. Nothing is paused; "
        "the next `run` continues."
    ),
    ExitCode.LOCKED: (
        "another `batchrun run` is using the same SQLite database; this run did nothing. "
        "Pass `--wait` to wait for it instead."
    ),
    ExitCode.CANCELED: (
        "`run` stopped sending a batch because it was canceled (`batchrun cancel`) while it "
        "ran: requests in flight were recorded, the rest are canceled."
    ),
    ExitCode.INTERRUPTED: (
        "interrupted (Ctrl-C or SIGTERM): requests in flight were recorded; `batchrun run` "
        "continues. `run --forever` ends this way."
    ),
}


class BatchrunError(Exception):
    """batchrun failed."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class InputFileError(BatchrunError):
    """The request file cannot be used."""

    def __init__(self, message: str | None = None, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message or "\n".join(problems) or None)
        # The problems the message lists, one ``source:line: what; how to fix`` each (the
        # first ones when there are many); empty when the file as a whole cannot be read.
        self.problems: tuple[str, ...] = tuple(problems)


class ConfigError(BatchrunError):
    """A setting is invalid."""


class MissingApiKeyError(ConfigError):
    """No API key is set for this endpoint."""

    def __init__(
        self, message: str | None = None, *, variable: str | None = None, what: str | None = None
    ) -> None:
        super().__init__(message)
        # The environment variable that is not set, and what it holds ("the API key for
        # endpoint 'x'"), for callers that word their own line (a run leaves the batch waiting).
        self.variable = variable
        self.what = what


class UnpricedModelsError(ConfigError):
    """A budget (max-cost) cannot be kept for models without a price."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str | None = None, *, models: Sequence[str] = ()) -> None:
        super().__init__(message)
        # The models without a price, sorted.
        self.models: tuple[str, ...] = tuple(sorted(models))


class MissingExtraError(ConfigError):
    """An optional extra is not installed: pip install 'batchrun-llm[parquet]'."""

    def __init__(self, message: str | None = None, *, module: str | None = None) -> None:
        super().__init__(message)
        # The module that could not be imported (``pyarrow``, ``pandas``).
        self.module = module


class UsageError(ConfigError):
    """These arguments do not go together."""

    exit_code = ExitCode.USAGE

    def __init__(
        self, message: str | None = None, *, argument: str | None = None, problem: str = ""
    ) -> None:
        if message is None and argument is not None and problem:
            message = f"{argument}: {problem}"
        super().__init__(message)
        # The argument at fault as Python names it (``notify_url``), and what is wrong with
        # it, worded to follow its name: the CLI shows the problem after its own flag.
        self.argument = argument
        self.problem = problem or self.message


class UnknownEndpointError(BatchrunError):
    """No endpoint has that name."""

    def __init__(self, message: str | None = None, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        # The name that is not an endpoint (or pool).
        self.endpoint = endpoint


class BatchNotFoundError(BatchrunError):
    """No batch has that id; `batchrun list` shows the batches in this database."""

    def __init__(self, message: str | None = None, *, batch_id: str | None = None) -> None:
        if message is None and batch_id is not None:
            message = f"no batch {batch_id!r} in this database; `batchrun list` shows its batches"
        super().__init__(message)
        # The id (or prefix, name, 'last') that names no batch.
        self.batch_id = batch_id


class AmbiguousBatchError(BatchNotFoundError):
    """More than one batch matches; give more of the id (`batchrun list` shows them)."""

    def __init__(
        self,
        message: str | None = None,
        *,
        batch_id: str | None = None,
        matches: Sequence[str] = (),
    ) -> None:
        super().__init__(message, batch_id=batch_id)
        # The ids of the batches that match (the message may list only the first ones).
        self.matches: tuple[str, ...] = tuple(matches)


class BatchStateError(BatchrunError):
    """The batch is not in a state that allows this."""

    def __init__(self, message: str | None = None, *, batch_id: str | None = None) -> None:
        super().__init__(message)
        # The batch whose state does not allow it.
        self.batch_id = batch_id


class DatabaseError(BatchrunError):
    """The database cannot be used."""


class DatabaseUnavailableError(DatabaseError):
    """The connection to the database was lost; it may come back."""


class RunLockedError(BatchrunError):
    """Another `batchrun run` is using this database."""

    exit_code = ExitCode.LOCKED

    def __init__(
        self,
        message: str | None = None,
        *,
        pid: int | None = None,
        since: datetime | None = None,
    ) -> None:
        super().__init__(message)
        # The other run's process id and when it took the lock, as it wrote them (None when
        # it had not written them yet, or they cannot be read).
        self.pid = pid
        self.since = since


class WorkerProcessError(BatchrunError):
    """A worker process of `batchrun run --processes` ended without finishing; what it had in
    flight went back to the queue."""
