"""The batch lane's pure rules: reading provider result lines, reconciling an unknown
create, and the auto lane's choice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from batchrun.batch_lane.auto import CANCEL_SETTLE_S, REALTIME_SAFETY, auto_lane
from batchrun.batch_lane.reconcile import Adopt, Ambiguous, NotCreated, WaitAndSee, reconcile
from batchrun.batch_lane.results import ImportContext, read_result_line
from batchrun.records import ImportedResult, ProviderBatchRow, Requeue
from batchrun.transport.batch_api import ProviderBatchInfo, origin_of

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 3},
}


def context(*, canceling: bool = False, deadline_passed: bool = False) -> ImportContext:
    return ImportContext("msgbatch_x", "anthropic", 0.5, NOW, canceling, deadline_passed)


def line(result: dict[str, object], custom_id: str = "a") -> bytes:
    return json.dumps({"custom_id": custom_id, "result": result}).encode()


def test_a_succeeded_line_is_stored_with_the_discount_and_the_lane() -> None:
    read = read_result_line(line({"type": "succeeded", "message": MESSAGE}), context())

    assert isinstance(read, ImportedResult)
    assert read.result.result_type == "succeeded"
    assert read.result.lane == "batch" and read.result.cost_factor == 0.5
    assert read.result.usage is not None and read.result.usage.input_tokens == 10
    assert json.loads(read.result.body or "")["content"][0]["text"] == "hi"


def test_a_poisoned_message_is_errored_not_stored_as_success() -> None:
    poisoned = dict(MESSAGE, usage={"input_tokens": 10**12, "output_tokens": 3})

    read = read_result_line(line({"type": "succeeded", "message": poisoned}), context())

    assert isinstance(read, ImportedResult)
    assert read.result.result_type == "errored"


@pytest.mark.parametrize("error_type", ["api_error", "overloaded_error", "timeout_error"])
def test_transient_errors_and_expiry_go_back_to_real_time_before_the_deadline(
    error_type: str,
) -> None:
    errored = {"type": "errored", "error": {"type": "error", "error": {"type": error_type}}}

    assert isinstance(read_result_line(line(errored), context()), Requeue)
    assert isinstance(read_result_line(line({"type": "expired"}), context()), Requeue)
    late = context(deadline_passed=True)
    final = read_result_line(line(errored), late)
    assert isinstance(final, ImportedResult) and final.result.result_type == "errored"
    expired = read_result_line(line({"type": "expired"}), late)
    assert isinstance(expired, ImportedResult) and expired.result.result_type == "expired"


def test_an_invalid_request_is_final_with_the_nested_error_kept() -> None:
    error = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: too big"},
        "request_id": "req_1",
    }

    read = read_result_line(line({"type": "errored", "error": error}), context())

    assert isinstance(read, ImportedResult)
    assert read.result.error_type == "invalid_request_error"
    assert json.loads(read.result.body or "") == error


def test_canceled_is_final_only_when_the_batch_is_canceling() -> None:
    canceled = line({"type": "canceled"})

    assert isinstance(read_result_line(canceled, context()), Requeue)
    kept = read_result_line(canceled, context(canceling=True))
    assert isinstance(kept, ImportedResult) and kept.result.result_type == "canceled"


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"custom_id": 3}', b'{"custom_id": "a", "result": {}}']
)
def test_unreadable_lines_are_none(raw: bytes) -> None:
    assert read_result_line(raw, context()) is None


def row(count: int = 100, *, intent_at: datetime = NOW) -> ProviderBatchRow:
    return ProviderBatchRow(
        id=1,
        batch_id="b",
        endpoint="anthropic",
        state="intent",
        provider_id=None,
        request_count=count,
        body_bytes=1000,
        intent_at=intent_at,
    )


def listed(batch_id: str, count: int, created_at: datetime) -> ProviderBatchInfo:
    return ProviderBatchInfo(batch_id, "in_progress", created_at, counts={"processing": count})


def test_one_matching_batch_is_adopted() -> None:
    found = [listed("mb_1", 100, NOW + timedelta(seconds=2)), listed("mb_2", 99, NOW)]

    verdict = reconcile(row(), found, known_ids=set(), now=NOW, grace_s=60)

    assert verdict == Adopt(found[0])


def test_a_batch_already_recorded_or_outside_the_window_is_no_candidate() -> None:
    found = [
        listed("mb_known", 100, NOW),
        listed("mb_old", 100, NOW - timedelta(hours=1)),
        listed("mb_late", 100, NOW + timedelta(hours=1)),
    ]

    verdict = reconcile(row(), found, known_ids={"mb_known"}, now=NOW, grace_s=60)

    assert verdict == WaitAndSee()


def test_two_candidates_are_ambiguous() -> None:
    found = [listed("mb_1", 100, NOW), listed("mb_2", 100, NOW + timedelta(seconds=1))]

    verdict = reconcile(row(), found, known_ids=set(), now=NOW, grace_s=60)

    assert isinstance(verdict, Ambiguous) and "mb_1, mb_2" in verdict.why


def test_nothing_found_is_not_created_only_after_the_grace() -> None:
    early = reconcile(row(), [], known_ids=set(), now=NOW + timedelta(seconds=59), grace_s=60)
    late = reconcile(row(), [], known_ids=set(), now=NOW + timedelta(seconds=60), grace_s=60)

    assert early == WaitAndSee()
    assert isinstance(late, NotCreated)


def test_auto_takes_the_batch_lane_when_the_deadline_leaves_room_for_real_time() -> None:
    lane, cut_off = auto_lane(
        now=NOW,
        deadline=NOW + timedelta(hours=24),
        realtime_s=3600,
        typical_s=3600,
        poll_interval_s=30,
    )

    assert lane == "batch"
    reserve_s = 3600 * REALTIME_SAFETY + CANCEL_SETTLE_S + 30
    assert cut_off == NOW + timedelta(hours=24) - timedelta(seconds=reserve_s)


def test_auto_takes_real_time_when_the_provider_would_likely_finish_after_the_cut_off() -> None:
    lane, cut_off = auto_lane(
        now=NOW,
        deadline=NOW + timedelta(hours=3),
        realtime_s=3600,
        typical_s=3600,
        poll_interval_s=30,
    )

    assert (lane, cut_off) == ("realtime", None)


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("https://gw.example.com/v1/messages/batches/b/results", True),
        ("https://GW.example.com:443/prefix/results?x=1", True),
        ("http://gw.example.com/v1/messages/batches/b/results", False),
        ("https://gw.example.com:8443/v1/messages/batches/b/results", False),
        ("https://api.anthropic.com/v1/messages/batches/b/results", False),
        ("https://gw.example.com.evil.test/results", False),
        ("//gw.example.com/results", False),
        ("not a url", False),
    ],
)
def test_only_the_endpoints_own_scheme_host_and_port_are_its_origin(url: str, same: bool) -> None:
    assert (origin_of(url) == origin_of("https://gw.example.com/anthropic")) is same
