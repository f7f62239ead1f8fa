"""Classification of answers and retry delays: table-driven, pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from batchrun.records import Fatal, Halt, Retryable, Succeeded, Usage
from batchrun.transport.classify import classify_response, parse_retry_after_s

MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 11,
        "output_tokens": 3,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 7,
    },
}


def _error(error_type: str, **extra: object) -> bytes:
    return json.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": "m", **extra},
            "request_id": "req_1",
        }
    ).encode()


def test_a_message_succeeds_with_its_usage() -> None:
    outcome = classify_response(200, {"request-id": "req_9"}, json.dumps(MESSAGE).encode())

    assert isinstance(outcome, Succeeded)
    assert outcome.usage == Usage(11, 3, 5, 7)
    assert (outcome.model, outcome.stop_reason, outcome.request_id) == (
        "claude-sonnet-4-5",
        "end_turn",
        "req_9",
    )
    assert json.loads(outcome.body) == MESSAGE


def test_a_pretty_printed_message_is_stored_on_one_line() -> None:
    outcome = classify_response(200, {}, json.dumps(MESSAGE, indent=2).encode())

    assert isinstance(outcome, Succeeded)
    assert "\n" not in outcome.body
    assert json.loads(outcome.body) == MESSAGE


@pytest.mark.parametrize(
    "body", [b"<html>oops</html>", b'{"type":"message","con', b""], ids=["html", "cut", "empty"]
)
def test_a_200_that_is_not_json_is_worth_one_more_try(body: bytes) -> None:
    outcome = classify_response(200, {}, body)

    assert isinstance(outcome, Retryable)
    assert outcome.at_most_once
    assert outcome.error["error"]["type"] == "api_error"
    assert "malformed" in outcome.reason
    assert outcome.raw_body == body.decode()


@pytest.mark.parametrize(
    "body",
    [b'{"ok": true}', b'{"type":"message","content":[]}', b"[" * 5000 + b"]" * 5000],
    ids=["not-a-message", "no-usage", "nested-too-deep"],
)
def test_a_200_with_json_that_is_no_message_is_final_and_kept(body: bytes) -> None:
    outcome = classify_response(200, {}, body)

    assert isinstance(outcome, Fatal)
    assert outcome.error["error"]["type"] == "api_error"
    assert outcome.raw_body == body.decode()


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        (400, "invalid_request_error", Fatal),
        (404, "not_found_error", Fatal),
        (413, "invalid_request_error", Fatal),
        (422, "invalid_request_error", Fatal),
        (401, "authentication_error", Halt),
        (402, "billing_error", Halt),
        (403, "permission_error", Halt),
        (408, "timeout_error", Retryable),
        (409, "api_error", Retryable),
        (429, "rate_limit_error", Retryable),
        (500, "api_error", Retryable),
        (502, "api_error", Retryable),
        (503, "api_error", Retryable),
        (504, "timeout_error", Retryable),
        (529, "overloaded_error", Retryable),
    ],
)
def test_status_classification_follows_the_api(
    status: int, error_type: str, expected: type
) -> None:
    outcome = classify_response(status, {}, _error(error_type))

    assert isinstance(outcome, expected)
    if isinstance(outcome, Fatal | Retryable):
        assert outcome.error["error"]["type"] == error_type
        assert outcome.error["request_id"] == "req_1"


def test_x_should_retry_wins_over_the_status() -> None:
    assert isinstance(classify_response(400, {"x-should-retry": "true"}, _error("x")), Retryable)
    assert isinstance(
        classify_response(500, {"x-should-retry": "false"}, _error("api_error")), Fatal
    )


def test_a_spend_limit_429_halts_the_batch() -> None:
    body = _error("rate_limit_error", details={"error_code": "enforced_spend_limit_reached"})

    outcome = classify_response(429, {}, body)

    assert isinstance(outcome, Halt)
    assert outcome.kind == "spend_limit"


def test_an_error_without_an_anthropic_body_gets_one_from_the_status() -> None:
    outcome = classify_response(502, {"request-id": "req_2"}, b"Bad Gateway")

    assert isinstance(outcome, Retryable)
    assert outcome.error == {
        "type": "error",
        "error": {"type": "api_error", "message": "HTTP 502: Bad Gateway"},
        "request_id": "req_2",
    }


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "600"}, 600.0),  # long waits are honoured, unlike the SDK's 60 s cap
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "Sun, 22 Nov 2026 12:00:30 GMT"}, 30.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_retry_after_s(headers, now=now) == expected


@pytest.mark.parametrize(
    ("status", "api_type", "recorded_type"),
    [(413, "request_too_large", "invalid_request_error"), (409, "conflict_error", "api_error")],
)
def test_error_types_the_sdk_does_not_know_are_recorded_under_a_known_one(
    status: int, api_type: str, recorded_type: str
) -> None:
    outcome = classify_response(status, {}, _error(api_type))

    assert isinstance(outcome, Fatal | Retryable)
    assert outcome.error["error"]["type"] == recorded_type
    assert outcome.error["error"]["original_type"] == api_type


@pytest.mark.parametrize(
    ("cache_creation", "one_hour"),
    [
        ({"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 3}, 3),
        ({"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 0}, 0),
        (None, 0),  # an API (or gateway) that sends no breakdown: all at the 5-minute price
        ({"ephemeral_1h_input_tokens": "3"}, 0),
        ({"ephemeral_1h_input_tokens": True}, 0),
        ({"ephemeral_1h_input_tokens": -4}, 0),
        ({"ephemeral_1h_input_tokens": 99}, 5),  # never more than the whole write
        ([3], 0),
    ],
)
def test_the_one_hour_part_of_a_cache_write_is_read_from_the_usage_breakdown(
    cache_creation: object, one_hour: int
) -> None:
    usage = dict(MESSAGE["usage"])  # type: ignore[call-overload]
    if cache_creation is not None:
        usage["cache_creation"] = cache_creation
    sent = json.dumps({**MESSAGE, "usage": usage}).encode()

    outcome = classify_response(200, {}, sent)

    assert isinstance(outcome, Succeeded)
    assert outcome.usage == Usage(11, 3, 5, 7, cache_creation_1h_input_tokens=one_hour)
    # The Message is stored as sent.
    assert outcome.body == sent.decode() and outcome.raw_body is None
