"""What the limiter learns from answers: how far off the input estimates are, how long
replies really are, and what a request costs on average.

:class:`InputCalibration` scales the raw input estimate (:mod:`batchrun.input.estimate`) per
endpoint × model by the ratio the responses' ``usage`` shows, so the estimate converges on the
endpoint's real tokenizer. :class:`OutputEstimate` learns how long replies actually are, for
limiters that count actual output rather than ``max_tokens``. :class:`TypicalRequest` says
what one request takes, to turn token limits into requests a second. :class:`ServerCount`
follows one limit's ``-remaining`` headers: what the server took between them, against what
the answers used, shows a server that charges ``max_tokens`` up front before it refuses
anything, and what it has left says how much may still be sent at once.
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
# Anthropic rounds token -remaining headers to the nearest thousand: what the server took
# between two readings (the sum telescopes) is off by at most this much.
REMAINING_ROUNDING_TOKENS = 1_000.0
# Answers read with the server's count draining before it can be said to charge max_tokens.
CHARGES_MIN_ANSWERS = 5
# What the server took beyond what the answers used must be at least this share of what
# charging input + max_tokens would have taken beyond it (the hypotheses are told apart).
CHARGES_MIN_SHARE = 0.5


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


class ServerCount:
    """One limit's ``-remaining`` headers read answer after answer, for a server that
    refills continuously at its limit ÷ 60 a second (a token bucket).

    Between two readings the server took ``remaining before + refill meanwhile -
    remaining now``. The refill is known only while the server's bucket was not full; its
    size is not announced, so it is taken as the most it was ever seen to hold (never more
    than it holds: the count can only come out low). A span in which it may have been full
    says nothing, and the count starts again from its end. Over the spans counted, what the
    server took is compared with what the answers used and with what they would have cost
    charged input + ``max_tokens`` (see :meth:`charges_up_front`)."""

    def __init__(self) -> None:
        # The latest reading: what the server had left, when, and its limit a minute.
        self.remaining = 0.0
        self.read_at: float | None = None
        self.limit_per_min = 0.0
        self.most = 0.0
        # Since the count started: what the server took, what the answers used, what they
        # would have cost charged max_tokens up front, and how many answers there were.
        self.taken = 0.0
        self.used = 0.0
        self.up_front = 0.0
        self.answers = 0

    def read(
        self, remaining: float, limit_per_min: float, at: float, used: float, up_front: float
    ) -> None:
        """A reading at ``at`` of an answer that used ``used`` of the limit and would have
        cost ``up_front`` charged input + max_tokens (both 0 for a refusal)."""
        if self.read_at is not None:
            refilled = self.remaining + self.limit_per_min / 60.0 * max(at - self.read_at, 0.0)
            if refilled >= self.most:
                # Possibly full meanwhile: what it took is unknown. Count from here.
                self.taken = self.used = self.up_front = 0.0
                self.answers = 0
            else:
                self.taken += refilled - remaining
                self.used += used
                self.up_front += up_front
                self.answers += 1 if up_front > 0 else 0
        self.remaining, self.read_at, self.limit_per_min = remaining, at, limit_per_min
        self.most = max(self.most, remaining)

    def charges_up_front(self, in_flight: float, slack: float) -> bool:
        """Whether the count shows the server charging max_tokens up front: it took more
        than the answers used by more than the requests in flight (``in_flight``, at input
        + max_tokens each: they may have been charged already) and ``slack`` (rounding,
        when each reading was taken), and closer to charging max_tokens than to the usage,
        but not more than charging max_tokens explains (else someone else uses the limit
        too)."""
        beyond_use = self.taken - self.used
        beyond_charged = self.up_front - self.used
        return (
            self.answers >= CHARGES_MIN_ANSWERS
            and beyond_charged > 0
            and beyond_use > in_flight + slack
            and beyond_use >= CHARGES_MIN_SHARE * beyond_charged
            and self.taken <= self.up_front + in_flight + slack
        )

    def left(self, now: float) -> float | None:
        """What the server has left at ``now``, refilled since the latest reading (never
        above the most it was seen to hold); None before any reading."""
        if self.read_at is None:
            return None
        refilled = self.remaining + self.limit_per_min / 60.0 * max(now - self.read_at, 0.0)
        return min(refilled, max(self.most, self.remaining))
