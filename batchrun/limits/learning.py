"""What the limiter learns from answers: how far off the input estimates are, how long
replies really are, and what a request costs on average.

:class:`InputCalibration` scales the raw input estimate (:mod:`batchrun.input.estimate`) per
endpoint × model by the ratio the responses' ``usage`` shows, so the estimate converges on the
endpoint's real tokenizer. :class:`OutputEstimate` learns how long replies actually are, for
limiters that count actual output rather than ``max_tokens``. :class:`TypicalRequest` says
what one request takes, to turn token limits into requests a second.
"""

from __future__ import annotations

import math

from batchrun.limits.dimensions import Amounts

# A new estimate moves the calibration this far towards the latest observed ratio.
CALIBRATION_SMOOTHING = 0.2
# Observations before a learned output estimate replaces max_tokens.
OUTPUT_MIN_SAMPLES = 5
OUTPUT_SMOOTHING = 0.1
# How far each new request moves the average cost of a request.
TYPICAL_SMOOTHING = 0.1
# What a request counts as costing before any was made: a short prompt and a paragraph of
# answer. Too low a guess only overstates the request rate until the first requests.
DEFAULT_REQUEST = Amounts(1.0, 1_000.0, 500.0)


class InputCalibration:
    """Scales raw estimates by what responses report, per endpoint × model."""

    def __init__(self) -> None:
        self.factor = 1.0
        self.samples = 0

    def estimate(self, raw_tokens: int) -> int:
        """The calibrated input estimate for a request whose raw estimate is ``raw_tokens``."""
        return max(1, math.ceil(raw_tokens * self.factor))

    def observe(self, raw_tokens: int, actual_tokens: int) -> None:
        """Learn from a response: ``actual_tokens`` is its whole prompt (input + cache)."""
        if raw_tokens <= 0 or actual_tokens <= 0:
            return
        ratio = actual_tokens / raw_tokens
        # The first observation replaces the guess outright; later ones smooth.
        if self.samples == 0:
            self.factor = ratio
        else:
            self.factor += CALIBRATION_SMOOTHING * (ratio - self.factor)
        self.samples += 1


class OutputEstimate:
    """How many output tokens to reserve: learned from replies, never above max_tokens.

    Until a few replies have been seen it reserves ``max_tokens``; then the running mean plus
    two mean deviations, so that most replies fit and the rest are corrected afterwards.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.deviation = 0.0
        self.samples = 0

    def reserve(self, max_tokens: int) -> int:
        """Output tokens to reserve for a request allowed ``max_tokens``."""
        if self.samples < OUTPUT_MIN_SAMPLES:
            return max_tokens
        return max(1, min(max_tokens, math.ceil(self.mean + 2 * self.deviation) + 1))

    def observe(self, output_tokens: int) -> None:
        """Learn from one reply's ``usage.output_tokens``."""
        if self.samples == 0:
            self.mean = float(output_tokens)
        else:
            error = output_tokens - self.mean
            self.mean += OUTPUT_SMOOTHING * error
            self.deviation += OUTPUT_SMOOTHING * (abs(error) - self.deviation)
        self.samples += 1


class TypicalRequest:
    """What one request of a key takes on average: what the answers used once there are
    any, before that what requests reserved, before that :data:`DEFAULT_REQUEST`."""

    def __init__(self) -> None:
        self._reserved: Amounts | None = None
        self._used: Amounts | None = None

    def reserved(self, amounts: Amounts) -> None:
        """A request reserved ``amounts``."""
        self._reserved = _smoothed(self._reserved, amounts)

    def used(self, amounts: Amounts) -> None:
        """An answer used ``amounts``."""
        self._used = _smoothed(self._used, amounts)

    def amounts(self) -> Amounts:
        """The average request."""
        return self._used or self._reserved or DEFAULT_REQUEST


def _smoothed(average: Amounts | None, new: Amounts) -> Amounts:
    if average is None:
        return new
    return Amounts(
        average.requests + TYPICAL_SMOOTHING * (new.requests - average.requests),
        average.input_tokens + TYPICAL_SMOOTHING * (new.input_tokens - average.input_tokens),
        average.output_tokens + TYPICAL_SMOOTHING * (new.output_tokens - average.output_tokens),
    )
