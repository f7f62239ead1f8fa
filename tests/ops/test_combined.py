"""One run's figures from its worker processes' (batchrun.ops.combined): what only a process
knows is summed, what each reads from the database is the largest seen, never a sum."""

from __future__ import annotations

from collections import Counter

import pytest

from batchrun.config.prices import CostTotal
from batchrun.dispatch.counts import RunReport
from batchrun.errors import ExitCode
from batchrun.ops.combined import (
    combined_exit_code,
    combined_keys,
    combined_report,
    combined_snapshot,
)
from batchrun.ops.monitor import KeyProgress, LimitUse, ProgressSnapshot
from batchrun.records import RequestCounts


def snapshot(**values: object) -> ProgressSnapshot:
    fields: dict[str, object] = {
        "elapsed_s": 10.0,
        "total": 1000,
        "done": 400,
        "succeeded": 380,
        "errored": 20,
        "canceled": 0,
        "retried": 3,
        "rate_limited": 1,
        "in_flight": 50,
        "waiting": 5,
        "requests_per_min": 600.0,
        "tokens_per_min": 6000.0,
        "input_tokens": 100,
        "output_tokens": 200,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cost": CostTotal(known_usd=1.0, list_usd=1.0),
        "eta_s": 60.0,
        "keys": (),
    }
    return ProgressSnapshot(**(fields | values))  # type: ignore[arg-type]


def test_process_figures_add_up_and_database_figures_do_not() -> None:
    one = snapshot(done=400, succeeded=380)
    two = snapshot(done=410, succeeded=390, elapsed_s=9.0, in_flight=40, retried=1)

    both = combined_snapshot([one, two])

    # The database's counts already hold every worker's answers: the largest, not a sum.
    assert (both.total, both.done, both.succeeded, both.elapsed_s) == (1000, 410, 390, 10.0)
    assert (both.in_flight, both.waiting, both.retried, both.rate_limited) == (90, 10, 4, 2)
    assert both.requests_per_min == 1200.0
    assert (both.input_tokens, both.output_tokens) == (200, 400)
    assert both.cost.known_usd == 2.0
    # 590 left at 1,200 a minute together.
    assert both.eta_s == pytest.approx(590 * 60 / 1200)


def test_the_eta_is_unknown_while_a_sending_worker_has_none_and_zero_when_done() -> None:
    assert combined_snapshot([snapshot(), snapshot(eta_s=None)]).eta_s is None
    assert combined_snapshot([snapshot(done=1000), snapshot(done=990)]).eta_s == 0.0


def test_throughput_against_a_shared_limit_is_summed_and_the_binding_limit_picked_again() -> None:
    rpm = 3000.0
    one = (
        KeyProgress("a", "m", (LimitUse("rpm", 1400.0, rpm), LimitUse("tpm", 10.0, None)), "rpm"),
    )
    two = (
        KeyProgress("a", "m", (LimitUse("rpm", 1500.0, rpm), LimitUse("tpm", 20.0, None)), "rpm"),
        KeyProgress("b", "m", (LimitUse("rpm", 5.0, None),), None),
    )

    keys = combined_keys([one, two])

    assert [(k.endpoint, k.model, k.binding) for k in keys] == [("a", "m", "rpm"), ("b", "m", None)]
    assert keys[0].uses == (LimitUse("rpm", 2900.0, rpm), LimitUse("tpm", 30.0, None))


def test_reports_add_up() -> None:
    one = RunReport(sent=5, succeeded=4, errored=1, error_types=Counter({"invalid": 1}))
    two = RunReport(
        sent=7, succeeded=7, rate_limited=2, paused={"b": "key"}, interrupted="by Ctrl-C"
    )

    both = combined_report([one, two])

    assert (both.sent, both.succeeded, both.errored, both.rate_limited) == (12, 11, 1, 2)
    assert both.error_types == Counter({"invalid": 1})
    assert both.paused == {"b": "key"} and both.interrupted == "by Ctrl-C"


@pytest.mark.parametrize(
    ("codes", "errored", "expected"),
    [
        ([ExitCode.OK, ExitCode.OK], 0, ExitCode.OK),
        ([ExitCode.OK, ExitCode.OK], 2, ExitCode.ERRORED_RESULTS),
        ([ExitCode.ERRORED_RESULTS, ExitCode.TIME_LIMIT], 2, ExitCode.TIME_LIMIT),
        ([ExitCode.PAUSED, ExitCode.INTERRUPTED], 0, ExitCode.INTERRUPTED),
        ([ExitCode.CANCELED, ExitCode.PAUSED], 0, ExitCode.PAUSED),
        ([ExitCode.OK, ExitCode.ERROR], 0, ExitCode.ERROR),
        ([ExitCode.ERROR, ExitCode.INTERRUPTED], 0, ExitCode.INTERRUPTED),
    ],
)
def test_the_exit_code_is_the_first_that_applies(
    codes: list[ExitCode], errored: int, expected: ExitCode
) -> None:
    found = combined_exit_code(codes, [RequestCountsOnly(errored)])  # type: ignore[list-item]

    assert found == expected


class RequestCountsOnly:
    """What combined_exit_code reads of a batch: its counts."""

    def __init__(self, errored: int) -> None:
        self.counts = RequestCounts(succeeded=1, errored=errored)
