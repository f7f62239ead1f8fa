"""Request files in: stream, validate and store a batch in one transaction.

Lines are validated while they are read and stored in chunks inside one transaction; the
first invalid line stops the storing (but not the checking, so the user sees every problem
at once), and at the end of the file the transaction is rolled back: a batch is stored whole
or not at all.

With ``skip_invalid`` (``submit --skip-invalid``) an invalid line is stored too, as an errored
request carrying the line's problems (``file:line: problem`` each), so the results still have
one line per input line, in input order. Its error type is ``invalid_input``
(:data:`~batchrun.records.INVALID_INPUT_ERROR_TYPE`), so that
``status``, the report, the dashboard and the flat exports count bad lines apart from what the
API refused; the Anthropic-format result keeps the API's own ``invalid_request_error`` (its
format knows no other type for a bad request) with the same message. A line without a usable
custom_id (missing, invalid, or a duplicate) gets the placeholder ``line-N`` (see
`batchrun.records.placeholder_custom_ids`). Problems with the file as a whole (no requests,
over a cap, UTF-16) still reject it whole.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO

from batchrun.errors import InputFileError
from batchrun.input.digests import cache_prefix_key, params_digest
from batchrun.input.estimate import estimate_input_tokens
from batchrun.input.reader import (
    MAX_FILE_BYTES,
    MAX_PRINTED_PROBLEMS,
    MAX_REQUESTS,
    FileProblem,
    ReadItem,
    format_problems,
    read_requests,
)
from batchrun.input.validation import InvalidLine
from batchrun.records import (
    DEFAULT_REPAIR_LIMIT,
    INVALID_INPUT_ERROR_TYPE,
    CacheTtl,
    Lane,
    NewBatch,
    NewRequest,
    RejectedLine,
    error_body,
)

if TYPE_CHECKING:
    from batchrun.store.store import Store

# Anthropic's batches expire 24 h after creation.
DEFAULT_EXPIRES_IN_S = 24 * 3600.0
_ID_ALPHABET = string.ascii_letters + string.digits
_ID_RANDOM_CHARS = 24
# What the Messages API answers a malformed request with: the type of a bad line's result in
# the Anthropic format, whose parsers know only the API's error types.
REJECTED_ERROR_TYPE = "invalid_request_error"


def new_batch_id() -> str:
    """A fresh batch id in Anthropic's style (``msgbatch_`` and random base62)."""
    return "msgbatch_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_RANDOM_CHARS))


@dataclass
class _Problems:
    """The problems found so far: the first lines' in full, a count of the rest, and the
    problem with the whole file, which is always shown, first: it alone decides that the
    file is refused even with --skip-invalid, so it must not hide among thousands of lines."""

    shown: list[InvalidLine] = field(default_factory=list)
    hidden: int = 0
    file_problem: FileProblem | None = None

    def add(self, item: InvalidLine | FileProblem) -> None:
        if isinstance(item, FileProblem):
            self.file_problem = item
        elif len(self.shown) < MAX_PRINTED_PROBLEMS:
            self.shown.append(item)
        else:
            self.hidden += len(item.problems)

    def error(self, source: str, locate: Callable[[int], str] | None) -> InputFileError:
        messages = format_problems(self.shown, source=source, max_problems=10**9, locate=locate)
        lines = messages[:MAX_PRINTED_PROBLEMS]
        hidden = self.hidden + len(messages) - len(lines)
        if hidden:
            lines.append(f"… and {hidden:,} more problem{'s' if hidden != 1 else ''}")
        if self.file_problem is not None:
            lines.insert(0, self.file_problem.message)
        if self.file_problem is not None and not self.shown and not self.hidden:
            # The file alone (empty, say): one line, with no lines "above" to fix.
            return InputFileError(f"{self.file_problem.message}; nothing was stored")
        lines.append("nothing was stored; fix the lines above and submit again")
        return InputFileError("\n".join(lines), problems=messages[:MAX_PRINTED_PROBLEMS])


def submit_requests(
    store: Store,
    stream: BinaryIO | None,
    *,
    source: str,
    endpoint: str,
    now: datetime,
    name: str | None = None,
    default_model: str | None = None,
    expires_in_s: float = DEFAULT_EXPIRES_IN_S,
    max_requests: int = MAX_REQUESTS,
    max_file_bytes: int = MAX_FILE_BYTES,
    skip_invalid: bool = False,
    on_skipped: Callable[[str], None] | None = None,
    max_cost_usd: float | None = None,
    lane: str = Lane.REALTIME,
    reuse: bool = False,
    cache_ttl: str = CacheTtl.AUTO,
    owner: str | None = None,
    locate: Callable[[int], str] | None = None,
    check_models: Callable[[set[str]], None] | None = None,
    items: Iterable[ReadItem] | None = None,
    input_row: Callable[[int], str | None] | None = None,
    repair_limit: int = DEFAULT_REPAIR_LIMIT,
) -> str:
    """Validate and store every request of ``stream`` as a new batch; returns its id.

    Raises InputFileError listing the problems (file:line: what and how to fix) if any line
    is invalid; then nothing is stored. With ``skip_invalid``, invalid lines are stored as
    errored requests instead, and ``on_skipped`` gets each of their problems as a
    ``file:line: problem`` line; only a problem with the whole file is raised then.
    ``max_cost_usd`` is the batch's budget, stored in the same transaction as the batch.
    ``lane`` is ``realtime``, ``batch`` or ``auto`` (see :mod:`batchrun.batch_lane`); ``reuse``
    answers requests whose params already succeeded from the stored answer; ``cache_ttl``
    (a :class:`~batchrun.records.CacheTtl`) is the TTL policy of the batch lane's prompt-cache
    groups. ``owner``: the
    id of the server key the batch belongs to. ``locate`` names where a line is in messages
    (default ``source:line``). ``check_models`` is called with the models of the valid
    requests once every line is read, inside the store's transaction: if it raises, nothing of
    the batch is stored (a budget refusing models without a price). ``items`` replaces
    reading ``stream`` (a table's rendered rows, `batchrun.input.table_ingest`), and
    ``input_row(line_no)`` gives the row stored beside each request. ``repair_limit``: repair
    sends per request at most for an answer that does not match its schema (0: none).
    """
    where = locate or (lambda line_no: f"{source}:{line_no}")
    batch = NewBatch(
        id=new_batch_id(),
        name=name,
        endpoint=endpoint,
        source=source,
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in_s),
        max_cost_usd=max_cost_usd,
        lane=lane,
        reuse=reuse,
        owner=owner,
        repair_limit=repair_limit,
        cache_ttl=cache_ttl,
    )
    problems = _Problems()

    def new_requests() -> Iterator[NewRequest]:
        read = items
        if read is None:
            assert stream is not None
            read = read_requests(
                stream,
                source=source,
                default_model=default_model,
                max_requests=max_requests,
                max_file_bytes=max_file_bytes,
            )
        refused = False
        models: set[str] = set()
        for line_no, item in read:
            row = None if input_row is None else input_row(line_no)
            if isinstance(item, FileProblem):
                problems.add(item)
                refused = True
            elif isinstance(item, InvalidLine):
                problems.add(item)
                if skip_invalid:
                    lines = [f"{where(item.line_no)}: {problem}" for problem in item.problems]
                    if on_skipped is not None:
                        for line in lines:
                            on_skipped(line)
                    yield _rejected_request(item, "\n".join(lines), row)
                else:
                    refused = True
            elif not refused:
                models.add(item.model)
                yield NewRequest(
                    line_no=line_no,
                    custom_id=item.custom_id,
                    model=item.model,
                    max_tokens=item.max_tokens,
                    params_json=item.params_json,
                    estimated_input_tokens=estimate_input_tokens(item.params),
                    params_digest=params_digest(item.params),
                    cache_prefix=cache_prefix_key(item.params_json, item.params),
                    input_row=row,
                )
        if refused:
            # Raised inside the store's transaction, so it rolls back everything stored.
            raise problems.error(source, locate)
        if check_models is not None:
            check_models(models)

    store.batches.create(batch, new_requests())
    return batch.id


def _rejected_request(item: InvalidLine, message: str, row: str | None) -> NewRequest:
    """An invalid line as an errored request of type ``invalid_input``, whose message lists
    the line's problems (``file:line: problem`` each); its Anthropic-format result is the
    API's own kind of error for a bad request, with that message."""
    body = error_body(REJECTED_ERROR_TYPE, message)
    return NewRequest(
        line_no=item.line_no,
        custom_id=item.custom_id,
        model="",
        max_tokens=0,
        # The line may not be JSON, or not UTF-8, or 32 MiB long: nothing of it is kept.
        params_json="null",
        rejected=RejectedLine(
            error_type=INVALID_INPUT_ERROR_TYPE,
            message=message,
            body=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        ),
        input_row=row,
    )
