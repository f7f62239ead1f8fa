"""What the simulator has seen: counters, duplicate detection, billing and a log of recent
requests.

In-process the live object is ``app.stats``; over HTTP, ``GET /_simulator/stats`` returns
:meth:`SimulatorStats.to_json` and :meth:`SimulatorStats.from_dict` reads it back.
``POST /_simulator/reset`` clears it.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from batchrun.simulator.config import DEFAULT_LOG_SIZE


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    """One API request as the simulator saw it.

    ``status`` is the HTTP status as a string, or ``"hang"``, ``"cut"``, ``"idle_cut"``
    (dropped after ``idle_timeout_s`` without a byte) or ``"abandoned"`` (the client left a
    stream before its end). ``loop_time`` is the server's event-loop clock at reception.
    ``headers`` holds ``anthropic-version``, ``anthropic-beta`` and ``content-type``
    (``None`` when absent), ``auth_scheme`` (``"x-api-key"``, ``"bearer"`` or ``"none"``)
    and ``api_key_sha256_prefix`` (the first 12 hex digits of the key's SHA-256, never the
    key). ``streamed``: the request asked for ``"stream": true``. ``message``: the Message
    answered (as JSON text; for a stream, the Message its events make up), kept with
    ``log_messages`` for answers that were 200s.
    """

    path: str
    model: str | None
    status: str
    loop_time: float
    request_id: str
    body_sha256: str
    headers: dict[str, str | None]
    streamed: bool = False
    message: str | None = None


def request_fingerprint(params: Mapping[str, Any]) -> str:
    """What identifies a request for billing: the SHA-256 (hex) of its Messages params
    without ``stream``, as ``json.dumps(..., sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)``. The same params sent streamed, unstreamed or in a batch have the
    same fingerprint."""
    unstreamed = {key: value for key, value in params.items() if key != "stream"}
    text = json.dumps(unstreamed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(slots=True)
class SimulatorStats:
    """Counters over message requests (``POST .../messages``) and Message Batches since
    start or reset.

    - ``received``: every message request, whatever the answer;
    - ``by_status``: answers by HTTP status (``"200"``, ``"429"``...), plus ``"hang"``,
      ``"cut"``, ``"idle_cut"`` and ``"abandoned"`` for answers never completed;
    - ``streamed``: message requests that asked for ``"stream": true``;
    - ``distinct_bodies`` / ``duplicate_receptions``: byte-identical bodies are the same
      request, so a duplicate reception is a resend (a retry or a double dispatch);
    - ``per_model``: message requests by model;
    - ``input_tokens_total`` / ``output_tokens_total``: usage (``input_tokens``,
      ``output_tokens``) of the 200 Messages answered on the Messages route;
    - ``admitted_by_second``: for those, ``[requests, input tokens, output_tokens]`` by the
      whole loop-time second in which they were admitted, the input tokens being those the
      ITPM limit counts (``input_tokens`` + ``cache_creation_input_tokens``);
    - ``count_tokens_received``: ``count_tokens`` requests (not in the counters above);
    - ``batches_created`` / ``batch_requests_received``: Message Batches created, and the
      requests in them; ``batch_retrieves``: GET retrieves by batch id (both flavours);
      ``batch_cancels``: cancel requests for a known batch;
    - ``billed_by_fingerprint``: how often each request (by :func:`request_fingerprint`) was
      billed: a 200 Message on the Messages route (streamed or not) or a ``succeeded`` batch
      result (counted when its batch ends); ``billed_total``: their sum;
      ``billed_fingerprints``: distinct fingerprints billed; ``paid_twice``: fingerprints
      billed more than once;
    - ``cache_read_input_tokens_total`` / ``cache_creation_input_tokens_total``: the cache
      usage of everything billed;
    - ``log``: the last ``log_size`` API requests of any kind.

    Exported (:meth:`to_dict`), ``billed_by_fingerprint`` keeps only the fingerprints billed
    more than once, as ``billed_more_than_once``, so 100,000 requests billed once each do
    not make the export big; :meth:`from_dict` reads those back as ``billed_by_fingerprint``.
    """

    log_size: int = DEFAULT_LOG_SIZE
    received: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    distinct_bodies: int = 0
    duplicate_receptions: int = 0
    per_model: dict[str, int] = field(default_factory=dict)
    input_tokens_total: int = 0
    output_tokens_total: int = 0
    admitted_by_second: dict[int, list[int]] = field(default_factory=dict)
    count_tokens_received: int = 0
    streamed: int = 0
    batches_created: int = 0
    batch_requests_received: int = 0
    batch_retrieves: dict[str, int] = field(default_factory=dict)
    batch_cancels: int = 0
    billed_by_fingerprint: dict[str, int] = field(default_factory=dict)
    billed_total: int = 0
    billed_fingerprints: int = 0
    paid_twice: int = 0
    cache_read_input_tokens_total: int = 0
    cache_creation_input_tokens_total: int = 0
    log: deque[RequestLogEntry] = field(default_factory=deque)
    # Receptions by body SHA-256 digest; kept out of exports (it grows with every body).
    _receptions: dict[bytes, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.log = deque(self.log, maxlen=self.log_size)

    def record_reception(self, body_digest: bytes) -> int:
        """Count a message request with this body SHA-256; returns its 1-based reception."""
        self.received += 1
        reception = self._receptions.get(body_digest, 0) + 1
        self._receptions[body_digest] = reception
        if reception == 1:
            self.distinct_bodies += 1
        else:
            self.duplicate_receptions += 1
        return reception

    def record_success(
        self, admitted_at: float, usage: Mapping[str, Any], *, fingerprint: str
    ) -> None:
        """Count a Message answered with 200 on the Messages route: its ``usage`` and its
        billing."""
        input_tokens: int = usage["input_tokens"]
        output_tokens: int = usage["output_tokens"]
        counted_input = input_tokens + usage["cache_creation_input_tokens"]
        self.input_tokens_total += input_tokens
        self.output_tokens_total += output_tokens
        second = int(admitted_at)
        bucket = self.admitted_by_second.get(second)
        if bucket is None:
            self.admitted_by_second[second] = [1, counted_input, output_tokens]
        else:
            bucket[0] += 1
            bucket[1] += counted_input
            bucket[2] += output_tokens
        self.record_billed(fingerprint, usage)

    def record_billed(self, fingerprint: str, usage: Mapping[str, Any]) -> None:
        """Count one billed answer (a 200 Message or a ``succeeded`` batch result)."""
        times = self.billed_by_fingerprint.get(fingerprint, 0) + 1
        self.billed_by_fingerprint[fingerprint] = times
        self.billed_total += 1
        if times == 1:
            self.billed_fingerprints += 1
        elif times == 2:
            self.paid_twice += 1
        self.cache_read_input_tokens_total += usage["cache_read_input_tokens"]
        self.cache_creation_input_tokens_total += usage["cache_creation_input_tokens"]

    def record_retrieve(self, batch_id: str) -> None:
        """Count a GET retrieve of a batch."""
        self.batch_retrieves[batch_id] = self.batch_retrieves.get(batch_id, 0) + 1

    def clear(self) -> None:
        """Forget everything, in place (holders of this object see the reset)."""
        self.received = self.distinct_bodies = self.duplicate_receptions = 0
        self.input_tokens_total = self.output_tokens_total = self.count_tokens_received = 0
        self.streamed = self.batches_created = self.batch_requests_received = 0
        self.batch_cancels = self.billed_total = self.billed_fingerprints = self.paid_twice = 0
        self.cache_read_input_tokens_total = self.cache_creation_input_tokens_total = 0
        self.batch_retrieves.clear()
        self.billed_by_fingerprint.clear()
        self.by_status.clear()
        self.per_model.clear()
        self.admitted_by_second.clear()
        self.log.clear()
        self._receptions.clear()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``admitted_by_second`` keys become strings in JSON)."""
        return {
            "log_size": self.log_size,
            "received": self.received,
            "by_status": dict(self.by_status),
            "distinct_bodies": self.distinct_bodies,
            "duplicate_receptions": self.duplicate_receptions,
            "per_model": dict(self.per_model),
            "input_tokens_total": self.input_tokens_total,
            "output_tokens_total": self.output_tokens_total,
            "admitted_by_second": {k: list(v) for k, v in self.admitted_by_second.items()},
            "count_tokens_received": self.count_tokens_received,
            "streamed": self.streamed,
            "batches_created": self.batches_created,
            "batch_requests_received": self.batch_requests_received,
            "batch_retrieves": dict(self.batch_retrieves),
            "batch_cancels": self.batch_cancels,
            "billed_total": self.billed_total,
            "billed_fingerprints": self.billed_fingerprints,
            "paid_twice": self.paid_twice,
            "billed_more_than_once": {
                fingerprint: times
                for fingerprint, times in self.billed_by_fingerprint.items()
                if times > 1
            },
            "cache_read_input_tokens_total": self.cache_read_input_tokens_total,
            "cache_creation_input_tokens_total": self.cache_creation_input_tokens_total,
            "log": [asdict(entry) for entry in self.log],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulatorStats:
        """Rebuild stats from :meth:`to_dict` or parsed :meth:`to_json` output.

        Duplicate detection cannot continue on the copy: body digests are not exported;
        ``billed_by_fingerprint`` holds only the fingerprints billed more than once.
        """
        return cls(
            log_size=data["log_size"],
            received=data["received"],
            by_status=dict(data["by_status"]),
            distinct_bodies=data["distinct_bodies"],
            duplicate_receptions=data["duplicate_receptions"],
            per_model=dict(data["per_model"]),
            input_tokens_total=data["input_tokens_total"],
            output_tokens_total=data["output_tokens_total"],
            admitted_by_second={int(k): list(v) for k, v in data["admitted_by_second"].items()},
            count_tokens_received=data["count_tokens_received"],
            streamed=data.get("streamed", 0),
            batches_created=data.get("batches_created", 0),
            batch_requests_received=data.get("batch_requests_received", 0),
            batch_retrieves=dict(data.get("batch_retrieves", {})),
            batch_cancels=data.get("batch_cancels", 0),
            billed_by_fingerprint=dict(data.get("billed_more_than_once", {})),
            billed_total=data.get("billed_total", 0),
            billed_fingerprints=data.get("billed_fingerprints", 0),
            paid_twice=data.get("paid_twice", 0),
            cache_read_input_tokens_total=data.get("cache_read_input_tokens_total", 0),
            cache_creation_input_tokens_total=data.get("cache_creation_input_tokens_total", 0),
            log=deque(RequestLogEntry(**entry) for entry in data["log"]),
        )
