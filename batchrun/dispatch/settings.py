"""How a worker dispatches: concurrency, retries, leases, polling, and their defaults.

Units are part of every name (``lease_s``, ``retry_max_delay_s``). Nothing here reads the
environment: the edges (the CLI and the public API) pass values down as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Transient failures (5xx, 529, 408, 409, timeouts, cut connections, malformed bodies) are
# tried this many times in all before the request becomes an errored result. 429s that
# carry rate-limit feedback do not count: waiting them out is part of pacing.
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_RETRY_INITIAL_DELAY_S = 1.0
DEFAULT_RETRY_MAX_DELAY_S = 60.0
# Requests in flight at once are worked out from the limits and the latency unless
# max_concurrency is given (batchrun.dispatch.capacity): at least this many...
BASE_IN_FLIGHT = 256
# ... and at most this many (or fewer when the process may open fewer files).
MAX_IN_FLIGHT = 4096
# A running request's lease: a worker renews it every lease_s / 4; a worker that dies stops
# renewing, and after lease_s its requests return to the queue.
DEFAULT_LEASE_S = 60.0
# How often a worker looks for cancellations and pauses made by other processes.
DEFAULT_CONTROL_POLL_S = 0.5
# After Ctrl-C or SIGTERM, requests in flight get this long to finish and be recorded;
# those still open then go back to the queue (and may be sent again by the next run).
DEFAULT_SHUTDOWN_GRACE_S = 30.0
# Results are written in one transaction per group of at most this many.
DEFAULT_WRITE_BATCH_SIZE = 500


@dataclass(frozen=True)
class DispatchConfig:
    """How a worker dispatches: concurrency, retries, leases and polling."""

    # Requests in flight at most; None: from the limits and latency, up to the ceiling.
    max_concurrency: int | None = None
    in_flight_ceiling: int = MAX_IN_FLIGHT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_initial_delay_s: float = DEFAULT_RETRY_INITIAL_DELAY_S
    retry_max_delay_s: float = DEFAULT_RETRY_MAX_DELAY_S
    lease_s: float = DEFAULT_LEASE_S
    control_poll_s: float = DEFAULT_CONTROL_POLL_S
    write_batch_size: int = DEFAULT_WRITE_BATCH_SIZE
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    # Ask the endpoint's /v1/messages/count_tokens for each request's input tokens instead
    # of estimating them (one more call per request; its own rate limits).
    count_tokens: bool = False
    # Endpoint name → its own max_attempts (from the config file), replacing max_attempts.
    max_attempts_by_endpoint: Mapping[str, int] = field(default_factory=dict)

    def max_attempts_for(self, endpoint: str) -> int:
        """Tries per request on ``endpoint`` before it ends errored."""
        return self.max_attempts_by_endpoint.get(endpoint, self.max_attempts)
