"""What the limiter learns from answers: how far off the input estimates are, and how long
replies really are.

:class:`InputCalibration` scales the raw input estimate (:mod:`batchrun.input.estimate`) per
endpoint × model by the ratio the responses' ``usage`` shows, so the estimate converges on the
endpoint's real tokenizer. :class:`OutputEstimate` learns how long replies actually are, for
limiters that count actual output rather than ``max_tokens``.
"""

from __future__ import annotations

import math

# A new estimate moves the calibration this far towards the latest observed ratio.
CALIBRATION_SMOOTHING = 0.2
# Observations before a learned output estimate replaces max_tokens.
OUTPUT_MIN_SAMPLES = 5
OUTPUT_SMOOTHING = 0.1


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
