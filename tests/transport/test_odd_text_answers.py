"""Answers whose JSON holds an escaped lone surrogate or NUL are read as what they are, whole
or streamed: a Message is a Message (orjson refuses such escapes; the readers fall back to
the standard library's parser), an error an error, and the JSON that is stored says the same
value once the store has written its escapes."""

from __future__ import annotations

import json
from typing import Any

from batchrun.records import Fatal, Halt, Succeeded
from batchrun.store.textsafe import safe_json_text, safe_text
from batchrun.transport.classify import classify_response
from batchrun.transport.streaming import MessageAssembler, StreamComplete, message_json

ODD = "\ud800 and \x00 end"


def _message(**fields: Any) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "a" + ODD}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 2},
        **fields,
    }


def test_a_message_holding_the_escapes_is_a_message_whatever_its_spacing() -> None:
    message = _message(model="m" + ODD, stop_reason="end" + ODD)
    for body in (json.dumps(message), json.dumps(message, indent=2)):
        outcome = classify_response(200, {}, body.encode())

        assert isinstance(outcome, Succeeded), outcome
        assert (outcome.model, outcome.stop_reason) == ("m" + ODD, "end" + ODD)
        # A pretty-printed body is written again on one line, with the characters raw; the
        # store writes them back as escapes.
        stored = safe_json_text(outcome.body)
        stored.encode("utf-8")
        assert json.loads(stored) == message


def test_an_error_holding_the_escapes_keeps_its_message() -> None:
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad" + ODD}}

    outcome = classify_response(400, {}, json.dumps(error).encode())

    assert isinstance(outcome, Fatal)
    assert outcome.error["error"]["message"] == "bad" + ODD


def test_a_halt_says_the_message_as_text_that_prints() -> None:
    error = {"type": "error", "error": {"type": "billing_error", "message": "bad" + ODD}}

    outcome = classify_response(402, {}, json.dumps(error).encode())

    # The pause reason `run` prints, and stores: no NUL, nothing a UTF-8 terminal refuses.
    assert isinstance(outcome, Halt)
    assert outcome.detail == "bad" + safe_text(ODD) == "bad\ufffd and \ufffd end"


def test_a_streamed_answer_holding_the_escapes_assembles_into_the_message() -> None:
    start = {"type": "message_start", "message": {**_message(), "content": []}}
    events: list[dict[str, Any]] = [
        start,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ODD}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end" + ODD}, "usage": {}},
        {"type": "message_stop"},
    ]
    # json.dumps writes the surrogate and the NUL as escapes, as a server would.
    wire = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
    assembler = MessageAssembler(max_bytes=1 << 20)

    end = assembler.feed(wire) or assembler.finish()

    assert isinstance(end, StreamComplete), end
    body = message_json(end.message)
    outcome = classify_response(200, {}, body)
    assert isinstance(outcome, Succeeded), outcome
    assert json.loads(body)["content"][0]["text"] == "a" + ODD
    assert outcome.stop_reason == "end" + ODD
