"""Server-sent events in, the final Message out: the parser at every chunk boundary, every
content block type, usage merging, error events, cuts, the size cap, and when to stream.

The oracle for the assembled Message is the official SDK's own accumulation
(``anthropic.lib.streaming._messages.accumulate_event``, what ``get_final_message()`` returns).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event

from batchrun.transport.sse import ServerSentEvent, SSEParser, StreamOverflow
from batchrun.transport.streaming import (
    MODEL_NONSTREAMING_MAX_TOKENS,
    SDK_NONSTREAMING_MAX_TOKENS,
    MessageAssembler,
    StreamBroken,
    StreamComplete,
    StreamEnd,
    StreamError,
    StreamTooLarge,
    message_json,
    should_stream,
    stream_threshold_tokens,
)

MiB = 1024 * 1024

START = {
    "type": "message_start",
    "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 472,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
            "service_tier": "standard",
        },
    },
}
CITATION = {
    "type": "char_location",
    "cited_text": "The grass is green.",
    "document_index": 0,
    "document_title": "Facts",
    "start_char_index": 0,
    "end_char_index": 20,
}
SEARCH_RESULT = {
    "type": "web_search_tool_result",
    "tool_use_id": "srvtoolu_014hJH82Qum7Td6UV8gDXThB",
    "content": [
        {
            "type": "web_search_result",
            "title": "Weather in Paris",
            "url": "https://example.com/paris",
            "encrypted_content": "EqgfCioIARgBIiQ3YTAwMjY1Mi1mZjM5",
            "page_age": None,
        }
    ],
}


def delta(index: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


# Every content block type, as the API streams them.
EVENTS: list[dict[str, Any]] = [
    START,
    block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
    {"type": "ping"},
    delta(0, "thinking_delta", thinking="I need to find "),
    delta(0, "thinking_delta", thinking="the weather. Ünïcode ✓"),
    delta(0, "signature_delta", signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3h"),
    stop(0),
    block_start(1, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}),
    stop(1),
    block_start(
        2,
        {
            "type": "server_tool_use",
            "id": SEARCH_RESULT["tool_use_id"],
            "name": "web_search",
            "input": {},
        },
    ),
    delta(2, "input_json_delta", partial_json=""),
    delta(2, "input_json_delta", partial_json='{"query": "weather'),
    delta(2, "input_json_delta", partial_json=' paris"}'),
    stop(2),
    block_start(3, SEARCH_RESULT),
    stop(3),
    block_start(4, {"type": "text", "text": ""}),
    delta(4, "text_delta", text="Line one\nline two: "),
    delta(4, "citations_delta", citation=CITATION),
    delta(4, "text_delta", text='"quoted" \\ and \u2028 more'),
    stop(4),
    block_start(
        5,
        {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "input": {},
        },
    ),
    delta(5, "input_json_delta", partial_json=""),
    delta(5, "input_json_delta", partial_json='{"location": "San Fra'),
    delta(5, "input_json_delta", partial_json='ncisco, CA", "unit": "fahrenheit", "days": [1, 2]}'),
    stop(5),
    block_start(6, {"type": "tool_use", "id": "toolu_empty", "name": "now", "input": {}}),
    stop(6),
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "output_tokens": 89,
            "input_tokens": 472,
            "cache_creation_input_tokens": 12,
            "cache_read_input_tokens": None,
            "server_tool_use": {"web_search_requests": 1},
        },
    },
    {"type": "message_stop"},
]

EXPECTED = {
    **START["message"],
    "content": [
        {
            "type": "thinking",
            "thinking": "I need to find the weather. Ünïcode ✓",
            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h",
        },
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
        {
            "type": "server_tool_use",
            "id": SEARCH_RESULT["tool_use_id"],
            "name": "web_search",
            "input": {"query": "weather paris"},
        },
        SEARCH_RESULT,
        {
            "type": "text",
            "text": 'Line one\nline two: "quoted" \\ and \u2028 more',
            "citations": [CITATION],
        },
        {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA", "unit": "fahrenheit", "days": [1, 2]},
        },
        {"type": "tool_use", "id": "toolu_empty", "name": "now", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 472,
        "cache_creation_input_tokens": 12,
        "cache_read_input_tokens": 0,
        "output_tokens": 89,
        "service_tier": "standard",
        "server_tool_use": {"web_search_requests": 1},
    },
}


def sse(events: list[dict[str, Any]], newline: str = "\n") -> bytes:
    """The events on the wire, as the API sends them."""
    text = "".join(
        f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
        for event in events
    )
    return text.replace("\n", newline).encode()


RECORDED = sse(EVENTS)


def assemble(pieces: list[bytes], *, max_bytes: int = MiB) -> StreamEnd:
    assembler = MessageAssembler(max_bytes=max_bytes)
    for piece in pieces:
        end = assembler.feed(piece)
        if end is not None:
            return end
    return assembler.finish()


def message_of(end: StreamEnd) -> dict[str, Any]:
    assert isinstance(end, StreamComplete), end
    return end.message


def sdk_final_message(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the official SDK's stream accumulates from ``events`` (top-level None fields it
    adds on its own left out)."""
    snapshot = None
    extra: dict[str, Any] = {}
    if "json_bufs" in inspect.signature(accumulate_event).parameters:
        extra["json_bufs"] = {}
    for event in json.loads(json.dumps(events)):
        if event["type"] != "ping":
            snapshot = accumulate_event(event=event, current_snapshot=snapshot, **extra)
    assert snapshot is not None
    started = START["message"]
    return {
        key: value
        for key, value in snapshot.to_dict().items()
        if value is not None or key in started
    }


def test_the_recorded_stream_assembles_into_the_message_the_sdk_builds() -> None:
    message = message_of(assemble([RECORDED]))
    assert message == EXPECTED
    sdk = sdk_final_message(EVENTS)
    # The SDK keeps cache_read_input_tokens from message_start when the delta says None.
    assert message == sdk | {"usage": {**sdk["usage"], "service_tier": "standard"}}


def test_the_assembled_json_is_compact_utf8_with_the_keys_in_message_order() -> None:
    text = message_json(message_of(assemble([RECORDED]))).decode()
    assert list(json.loads(text)) == list(START["message"])
    assert "\n" not in text and "Ünïcode" in text
    assert json.loads(text) == EXPECTED


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_chunk_boundary_gives_the_same_message(newline: str) -> None:
    raw = sse(EVENTS, newline)
    for cut in range(len(raw) + 1):
        assert message_of(assemble([raw[:cut], raw[cut:]])) == EXPECTED, cut


def test_one_byte_at_a_time_gives_the_same_message() -> None:
    pieces = [RECORDED[i : i + 1] for i in range(len(RECORDED))]
    assert message_of(assemble(pieces)) == EXPECTED


def test_multibyte_characters_split_across_pieces_survive() -> None:
    raw = RECORDED
    at = raw.index("✓".encode()) + 1  # inside the character's three bytes
    assert message_of(assemble([raw[:at], raw[at:]])) == EXPECTED


# -- the SSE parser ---------------------------------------------------------------------------


def parse(raw: bytes) -> list[ServerSentEvent]:
    parser = SSEParser(max_pending_bytes=MiB)
    return parser.feed(raw) + parser.close()


def test_data_lines_join_with_newlines_and_comments_ids_and_retries_are_ignored() -> None:
    raw = (
        b"\xef\xbb\xbf: a comment\n"
        b"id: 7\nretry: 1000\nevent: one\ndata: first\ndata:second\ndata\n\n"
        b"data: no name\n\n"
        b": only a comment\n\n"
        b"event: trailing\ndata: dropped, no blank line"
    )
    assert parse(raw) == [
        ServerSentEvent("one", "first\nsecond\n"),
        ServerSentEvent("", "no name"),
    ]


def test_a_data_line_split_into_json_lines_is_one_event() -> None:
    data = json.dumps(START, indent=1).replace("\n", "\ndata: ")
    raw = f"event: message_start\ndata: {data}\n\n".encode() + sse(EVENTS[1:])
    assert message_of(assemble([raw])) == EXPECTED


def test_a_final_cr_ends_the_last_event() -> None:
    raw = sse(EVENTS, "\r")
    assert raw.endswith(b"\r\r")
    assert message_of(assemble([raw])) == EXPECTED


def test_an_endless_line_is_refused_at_the_size_cap() -> None:
    parser = SSEParser(max_pending_bytes=1000)
    parser.feed(b"data: " + b"x" * 900)
    with pytest.raises(StreamOverflow):
        parser.feed(b"x" * 200)


def test_an_endless_event_of_many_data_lines_is_refused_at_the_size_cap() -> None:
    end = assemble([b"event: message_start\n" + b"data: x\n" * 600], max_bytes=1024)
    assert end == StreamTooLarge(1024)


# -- usage, unknown events, error events, cuts and malformed streams --------------------------


def test_message_delta_usage_replaces_only_the_counts_it_carries() -> None:
    events = [
        START,
        block_start(0, {"type": "text", "text": ""}),
        delta(0, "text_delta", text="hi"),
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": 2},
        },
        {
            "type": "message_delta",
            "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
            "usage": {"output_tokens": 3, "cache_read_input_tokens": 40},
        },
        {"type": "message_stop"},
    ]
    message = message_of(assemble([sse(events)]))
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == "END"
    assert message["usage"] == {
        **START["message"]["usage"],
        "output_tokens": 3,
        "cache_read_input_tokens": 40,
    }
    assert message == sdk_final_message(events)


def test_unknown_events_and_deltas_and_misfit_deltas_are_skipped_as_the_sdk_does() -> None:
    events = [
        {"type": "future_event", "hello": 1},
        START,
        block_start(0, {"type": "text", "text": ""}),
        {"type": "content_block_annotation", "index": 0},
        delta(0, "future_delta", stuff="x"),
        delta(0, "input_json_delta", partial_json="{"),
        delta(0, "text_delta", text="kept"),
        stop(0),
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 1},
        },
        {"type": "message_stop"},
    ]
    message = message_of(assemble([sse(events)]))
    assert message["content"] == [{"type": "text", "text": "kept"}]


def test_the_events_count_counts_progress_not_pings() -> None:
    assembler = MessageAssembler(max_bytes=MiB)
    assembler.feed(sse([START]))
    assert assembler.events == 1
    assembler.feed(sse([{"type": "ping"}] * 5) + b": keep-alive\n\n")
    assert assembler.events == 1
    assembler.feed(sse([block_start(0, {"type": "text", "text": ""})]))
    assert assembler.events == 2


def test_an_error_event_ends_the_stream_with_its_error() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    raw = sse([START, block_start(0, {"type": "text", "text": ""}), error])
    assert assemble([raw, sse(EVENTS[2:])]) == StreamError(error)


def test_an_error_event_without_json_becomes_an_api_error() -> None:
    end = assemble([sse([START]) + b"event: error\ndata: upstream exploded\n\n"])
    assert isinstance(end, StreamError)
    assert end.body["error"] == {
        "type": "api_error",
        "message": "the stream sent an error event: upstream exploded",
    }


@pytest.mark.parametrize("events", [len(EVENTS) - 1, 5, 1, 0])
def test_a_stream_that_ends_before_message_stop_is_broken(events: int) -> None:
    end = assemble([sse(EVENTS[:events])])
    assert isinstance(end, StreamBroken)
    assert "the stream ended before message_st" in end.reason


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (sse([START]) + b'event: content_block_start\ndata: {"type\n\n', "not a JSON object"),
        (sse([block_start(0, {"type": "text", "text": ""})]), "before message_start"),
        (sse([START, block_start(1, {"type": "text", "text": ""})]), "index 1"),
        (sse([START, delta(0, "text_delta", text="x")]), "block 0, which has not started"),
        (sse([START, START]), "a second message_start"),
        (sse([START, {"type": "content_block_delta", "delta": {}}]), "without an index"),
        (
            sse(
                [
                    START,
                    block_start(0, {"type": "tool_use", "id": "t", "name": "f", "input": {}}),
                    delta(0, "input_json_delta", partial_json='{"a": '),
                    stop(0),
                    {"type": "message_stop"},
                ]
            ),
            "not JSON together",
        ),
    ],
)
def test_a_malformed_stream_is_broken(raw: bytes, problem: str) -> None:
    end = assemble([raw])
    assert isinstance(end, StreamBroken)
    assert end.reason.startswith("malformed stream") and problem in end.reason


def test_a_message_larger_than_the_cap_is_refused() -> None:
    text = "x" * 4096
    events = [START, block_start(0, {"type": "text", "text": ""})]
    events += [delta(0, "text_delta", text=text)] * 300
    end = assemble([sse(events)], max_bytes=MiB)
    assert end == StreamTooLarge(MiB)


def test_pings_cost_nothing_against_the_cap() -> None:
    assembler = MessageAssembler(max_bytes=4096)
    assembler.feed(sse([START]))
    for _ in range(10_000):
        assert assembler.feed(sse([{"type": "ping"}])) is None


def test_nothing_is_read_after_the_end() -> None:
    assembler = MessageAssembler(max_bytes=MiB)
    end = assembler.feed(RECORDED)
    assert isinstance(end, StreamComplete)
    assert assembler.feed(b"data: garbage\n\n") is end
    assert assembler.finish() is end


# -- when to stream ---------------------------------------------------------------------------


def params(max_tokens: int, model: str = "claude-sonnet-4-5") -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": []}


def test_by_default_the_sdks_ten_minute_rule_decides() -> None:
    # 3,600 s x max_tokens / 128,000 > 600 s
    assert int(600 * 128_000 / 3600) == SDK_NONSTREAMING_MAX_TOKENS
    assert not should_stream(params(21_333), None)
    assert should_stream(params(21_334), None)
    assert should_stream(params(64_000), None)


@pytest.mark.parametrize("model", sorted(MODEL_NONSTREAMING_MAX_TOKENS))
def test_opus_4_and_4_1_stream_above_8192_by_default(model: str) -> None:
    assert stream_threshold_tokens(model, None) == 8_192
    assert not should_stream(params(8_192, model), None)
    assert should_stream(params(8_193, model), None)


def test_a_configured_threshold_applies_to_every_model_and_0_streams_everything() -> None:
    assert should_stream(params(1), 0)
    assert should_stream(params(1, "claude-opus-4-0"), 0)
    assert not should_stream(params(50_000), 50_000)
    assert should_stream(params(50_001), 50_000)
    # The setting replaces the per-model caps too: a very high one turns streaming off.
    assert not should_stream(params(30_000, "claude-opus-4-0"), 10**9)


def test_params_without_a_usable_max_tokens_or_model_are_not_streamed() -> None:
    assert not should_stream({"model": "m"}, 0)
    assert not should_stream({"max_tokens": 5}, 0)
    assert not should_stream({"model": "m", "max_tokens": "5"}, 0)
