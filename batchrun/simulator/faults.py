"""Which fault a message request gets, and how long it waits before its answer.

A directive's faults come first (while its ``times`` lasts); otherwise, one draw from the
seeded random stream picks at most one random fault by :class:`FaultRates`. Jitter comes
from the same stream, so a seeded simulator answering requests in the same order makes the
same choices.
"""

from __future__ import annotations

import random

from batchrun.simulator.config import SimulatorConfig
from batchrun.simulator.directives import Directive

HANG = "hang"
CUT = "cut"
MALFORMED = "malformed"
NOT_MESSAGE = "not_message"
STREAM_CUT = "stream_cut"

# An HTTP error status (answered before the rate limiter), a delivery fault (after it:
# HANG, CUT, MALFORMED, NOT_MESSAGE, STREAM_CUT) or None.
Fault = int | str | None


class Chaos:
    """Draws faults and latencies for one simulator."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        faults = config.faults
        self._random_faults: tuple[tuple[int | str, float], ...] = tuple(
            (fault, rate)
            for fault, rate in (
                (500, faults.error_500),
                (529, faults.overloaded_529),
                (HANG, faults.hang),
                (CUT, faults.cut),
                (MALFORMED, faults.malformed),
                (STREAM_CUT, faults.stream_cut),
            )
            if rate > 0.0
        )
        self.reset()

    def reset(self) -> None:
        """Restart the random stream from the configured seed."""
        self._rng = random.Random(self._config.seed)

    def pick(self, directive: Directive, reception: int) -> Fault:
        """The fault for the ``reception``-th copy of a body carrying ``directive``."""
        if directive.faults_apply(reception):
            if directive.status is not None and directive.status != 200:
                return directive.status
            if directive.hang:
                return HANG
            if directive.cut:
                return CUT
            if directive.malformed:
                return MALFORMED
            if directive.not_message:
                return NOT_MESSAGE
        if self._random_faults:
            draw = self._rng.random()
            for fault, rate in self._random_faults:
                if draw < rate:
                    return fault
                draw -= rate
        return None

    def latency_s(self, directive: Directive, output_tokens: int) -> float:
        """Seconds to wait before answering: the directive's, or the configured latency."""
        first_token_s, tokens_s = self.latency_parts_s(directive, output_tokens)
        return first_token_s + tokens_s

    def latency_parts_s(self, directive: Directive, output_tokens: int) -> tuple[float, float]:
        """The latency in two parts, as a stream spreads it: seconds before the first token
        (the fixed latency and the jitter; a directive's latency whole), and seconds for
        the output tokens. One draw from the random stream, as :meth:`latency_s` makes."""
        if directive.latency_s is not None:
            return directive.latency_s, 0.0
        config = self._config
        first_token_s = config.latency_s
        if config.latency_jitter_s > 0.0:
            first_token_s += self._rng.random() * config.latency_jitter_s
        return first_token_s, config.latency_per_output_token_s * output_tokens
