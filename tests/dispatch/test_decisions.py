"""What becomes of a request after each kind of answer: a pure function, tested by tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchrun.dispatch.decisions import (
    Backoff,
    Canceled,
    Decision,
    Expired,
    Finish,
    Pause,
    Retry,
    Unsent,
    after_stop,
    decide,
    retry_delay_s,
)
from batchrun.records import (
    ClaimedRequest,
    Fatal,
    Halt,
    Outcome,
    Retryable,
    Succeeded,
    Usage,
    error_body,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BACKOFF = Backoff(initial_delay_s=1.0, max_delay_s=60.0)


def claimed(
    *, attempts: int = 1, failures: int = 0, last_error: str | None = None
) -> ClaimedRequest:
    return ClaimedRequest(
        7, "msgbatch_x", "q-1", "claude-haiku-4-5", 100, "{}", attempts, failures, None, last_error
    )


def decided(
    outcome: Outcome,
    *,
    attempts: int = 1,
    failures: int = 0,
    max_attempts: int = 3,
    last_error: str | None = None,
) -> Decision:
    return decide(
        claimed(attempts=attempts, failures=failures, last_error=last_error),
        outcome,
        endpoint="gw",
        key_hint="GW_KEY",
        max_attempts=max_attempts,
        backoff=BACKOFF,
        now=NOW,
        latency_ms=250,
        input_estimate=12,
        jitter=0.0,
    )


SUCCEEDED = Succeeded('{"type":"message"}', "claude-haiku-4-5", "end_turn", Usage(10, 5), "req_1")
SERVER_ERROR = Retryable("HTTP 500 api_error", error_body("api_error", "boom"), 500)
RATE_LIMITED = Retryable("HTTP 429", error_body("rate_limit_error", "slow"), 429, 30.0)
BAD_REQUEST = Fatal(error_body("invalid_request_error", "bad", "req_9"), 400)


@pytest.mark.parametrize(
    ("outcome", "failures", "expected"),
    [
        (SUCCEEDED, 0, "succeeded"),
        (BAD_REQUEST, 0, "errored"),
        (SERVER_ERROR, 0, "retry"),  # first failure of 3 allowed
        (SERVER_ERROR, 1, "retry"),
        (SERVER_ERROR, 2, "errored"),  # the third failure uses up the attempts
        (RATE_LIMITED, 2, "retry"),  # a 429 is pacing, not a failure
        (Halt("authentication", 401, "bad key"), 0, "pause"),
        (Halt("spend_limit", 429, "limit"), 0, "pause"),
    ],
)
def test_each_answer_leads_to_one_decision(outcome: Outcome, failures: int, expected: str) -> None:
    decision = decided(outcome, failures=failures)

    match decision:
        case Finish(result=result):
            assert result.result_type == expected
        case Retry():
            assert expected == "retry"
        case Pause():
            assert expected == "pause"


def test_a_success_is_recorded_with_everything_the_answer_said() -> None:
    decision = decided(SUCCEEDED)

    assert isinstance(decision, Finish)
    result = decision.result
    assert (result.request_id, result.custom_id, result.http_status) == (7, "q-1", 200)
    assert (result.usage, result.request_ref, result.body) == (
        Usage(10, 5),
        "req_1",
        SUCCEEDED.body,
    )
    assert (result.latency_ms, result.estimated_input_tokens, result.completed_at) == (250, 12, NOW)


def test_a_final_error_keeps_the_apis_error_object_and_request_id() -> None:
    decision = decided(BAD_REQUEST)

    assert isinstance(decision, Finish)
    assert decision.result.error_type == "invalid_request_error"
    assert decision.result.request_ref == "req_9"
    assert decision.result.body is not None and '"message":"bad"' in decision.result.body


def test_giving_up_says_so_first_and_names_the_last_failure() -> None:
    decision = decided(SERVER_ERROR, attempts=2, failures=2)

    assert isinstance(decision, Finish)
    # Two sends before this claim, and this one: three.
    assert decision.result.error_message == (
        "gave up after 3 attempts; last failure: HTTP 500 api_error. boom"
    )
    assert decision.result.attempts == 3


def test_a_failure_whose_message_is_its_reason_is_said_once() -> None:
    timeout = Retryable("no complete answer within 5 s", error_body("timeout_error", "x"))
    timeout = Retryable(timeout.reason, error_body("timeout_error", timeout.reason))

    decision = decided(timeout, attempts=2, failures=2)

    assert isinstance(decision, Finish)
    assert decision.result.error_message == (
        "gave up after 3 attempts; last failure: no complete answer within 5 s"
    )


def test_a_body_that_is_not_json_twice_in_a_row_ends_the_request() -> None:
    cut = Retryable(
        "malformed response: not JSON",
        error_body("api_error", "x"),
        200,
        at_most_once=True,
        raw_body="{",
    )
    first = decided(cut, max_attempts=8)
    again = decided(cut, failures=1, max_attempts=8, last_error=cut.reason)

    assert isinstance(first, Retry)
    assert isinstance(again, Finish)
    assert (again.result.result_type, again.result.raw_body) == ("errored", "{")


def test_a_retry_waits_the_servers_retry_after_and_counts_no_failure_for_a_429() -> None:
    decision = decided(RATE_LIMITED, failures=1)

    assert isinstance(decision, Retry)
    assert decision.retry.not_before == NOW + timedelta(seconds=30)
    assert decision.retry.failures == 1
    assert decision.retry.last_error == "HTTP 429"


@pytest.mark.parametrize(
    ("kind", "detail", "reason"),
    [
        ("authentication", "x", "authentication failed for endpoint gw: check GW_KEY"),
        ("permission", "x", "permission denied by endpoint gw: check that GW_KEY may use it"),
        ("billing", "no credit", "endpoint gw refused the request for billing reasons: no credit"),
        ("spend_limit", "", "endpoint gw reports that the spend limit is reached: spend_limit"),
    ],
)
def test_a_halt_pauses_the_batch_with_a_reason_naming_the_fix(
    kind: str, detail: str, reason: str
) -> None:
    assert decided(Halt(kind, 401, detail)) == Pause(reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "write"),
    [
        ("canceling", Canceled(7)),
        ("expired", Expired(7)),
        ("paused", Unsent(7)),
        ("drained", Unsent(7)),
        ("shutdown", Unsent(7)),
    ],
)
def test_a_request_waiting_when_its_batch_stops_is_written_as_the_stop_says(
    kind: str, write: object
) -> None:
    assert after_stop(claimed(), kind) == write  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("failures", "jitter", "delay_s"),
    [
        (1, 0.0, 1.0),
        (2, 0.0, 2.0),
        (3, 0.0, 4.0),
        (7, 0.0, 60.0),
        (9, 0.0, 60.0),
        (1, 0.999, 0.75025),
        (4, 0.5, 7.0),
    ],
)
def test_back_off_doubles_to_a_cap_with_up_to_a_quarter_of_jitter_taken_off(
    failures: int, jitter: float, delay_s: float
) -> None:
    got = retry_delay_s(failures, retry_after_s=None, backoff=BACKOFF, jitter=jitter)

    assert got == pytest.approx(delay_s)


def test_the_servers_retry_after_wins_over_back_off() -> None:
    assert retry_delay_s(3, retry_after_s=120, backoff=BACKOFF, jitter=0.9) == 120
