"""Per-line checks: each rule has a case with the message fragment it must produce."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from batchrun.input.validation import (
    CONTENT_BLOCK_TYPES,
    MAX_IMAGE_BASE64_BYTES,
    MAX_PROBLEMS_PER_LINE,
    InvalidLine,
    ValidRequest,
    _common_request,
    check_parsed_line,
    validate_line,
)
from batchrun.limits.families import ALL_MODELS

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(32)).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(32)).decode()

GOOD_PARAMS: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Hello"}],
}


def line(**changes: Any) -> bytes:
    """A valid request line with top-level keys changed; a value of ... removes the key."""
    obj: dict[str, Any] = {"custom_id": "req-1", "params": dict(GOOD_PARAMS)}
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj).encode()


def with_params(**changes: Any) -> bytes:
    """A valid request line with params keys changed; a value of ... removes the key."""
    params = dict(GOOD_PARAMS)
    for key, value in changes.items():
        if value is ...:
            del params[key]
        else:
            params[key] = value
    return line(params=params)


def with_content(*blocks: Any) -> bytes:
    return with_params(messages=[{"role": "user", "content": list(blocks)}])


def image(source: Any) -> dict[str, Any]:
    return {"type": "image", "source": source}


def openai(**changes: Any) -> bytes:
    obj: dict[str, Any] = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/messages",
        "body": dict(GOOD_PARAMS),
    }
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj).encode()


def invalid(raw: bytes, **kwargs: Any) -> InvalidLine:
    result = validate_line(raw, 7, **kwargs)
    assert isinstance(result, InvalidLine), result
    assert result.line_no == 7
    return result


def valid(raw: bytes, **kwargs: Any) -> ValidRequest:
    result = validate_line(raw, 7, **kwargs)
    assert isinstance(result, ValidRequest), result
    return result


INVALID_CASES: list[tuple[str, bytes, str]] = [
    # The line as a whole.
    ("not json", b'{"custom_id": "a",}', "not valid JSON: trailing comma is not allowed at column"),
    ("truncated json", b'{"custom_id": "a"', "one complete JSON object on a single line"),
    ("nan is not json", b'{"custom_id": "a", "x": NaN}', "not valid JSON"),
    ("not an object", b"[1, 2]", "line must be a JSON object, not an array"),
    ("a bare string", b'"hello"', "line must be a JSON object, not a string"),
    (
        "invalid utf-8",
        b'{"custom_id": "\xff"}',
        "line is not valid UTF-8 at byte 16; save the file",
    ),
    ("unknown key", line(param={}), "unknown key 'param' (did you mean 'params'?)"),
    ("unknown keys", line(a=1, b=2), "unknown keys 'a', 'b'; a request line has only"),
    ("params and body", line(body={}), 'line has both "params" and "body"'),
    # custom_id.
    ("custom_id missing", line(custom_id=...), 'custom_id is missing; add "custom_id"'),
    ("custom_id a number", line(custom_id=12), "custom_id must be a string, not an integer (12)"),
    ("custom_id null", line(custom_id=None), "custom_id must be a string, not null"),
    ("custom_id empty", line(custom_id=""), "custom_id is empty"),
    (
        "custom_id with a space",
        line(custom_id="a b"),
        "custom_id 'a b' may only contain letters, digits, '_' and '-' (1-64 chars)",
    ),
    ("custom_id non-ascii", line(custom_id="café"), "custom_id 'café' may only contain"),
    ("custom_id too long", line(custom_id="x" * 70), "is 70 characters long; use at most 64"),
    # params.
    ("params missing", line(params=...), "params is missing; put the Messages API request under"),
    ("params not an object", line(params=[1]), "params must be an object"),
    ("model missing", with_params(model=...), "params.model is missing"),
    ("model empty", with_params(model=""), "params.model must be a non-empty string"),
    ("model blank", with_params(model="  "), "params.model must be a non-empty string"),
    ("model a number", with_params(model=3), "params.model must be a non-empty string"),
    ("model reserved", with_params(model="(all models)"), '"(all models)" is reserved'),
    ("max_tokens missing", with_params(max_tokens=...), "params.max_tokens is missing"),
    ("max_tokens bool", with_params(max_tokens=True), "must be an integer, not a boolean"),
    ("max_tokens float", with_params(max_tokens=10.0), "not a number (10.0); write 10"),
    ("max_tokens fraction", with_params(max_tokens=10.5), "not a number (10.5)"),
    ("max_tokens string", with_params(max_tokens="10"), "('10'); write 10 without quotes"),
    ("max_tokens zero", with_params(max_tokens=0), "params.max_tokens is 0; it must be at least 1"),
    ("max_tokens negative", with_params(max_tokens=-5), "is -5; it must be at least 1"),
    ("stream true", with_params(stream=True), 'remove "stream" (batchrun collects whole'),
    ("stream not a bool", with_params(stream="yes"), "params.stream is 'yes'"),
    # messages.
    ("messages missing", with_params(messages=...), "params.messages is missing"),
    ("messages not a list", with_params(messages={}), "must be an array of messages, not an obj"),
    ("messages empty", with_params(messages=[]), "params.messages is empty"),
    ("message not an object", with_params(messages=["hi"]), "params.messages[0] must be an obj"),
    (
        "role missing",
        with_params(messages=[{"content": "hi"}]),
        "params.messages[0].role is missing",
    ),
    (
        "role system",
        with_params(messages=[{"role": "system", "content": "hi"}]),
        'role \'system\' is not allowed; use "user" or "assistant" (put a system prompt',
    ),
    (
        "content missing",
        with_params(messages=[{"role": "user"}]),
        "params.messages[0].content is missing",
    ),
    (
        "content a number",
        with_params(messages=[{"role": "user", "content": 5}]),
        "must be a string or a list of content blocks, not an integer",
    ),
    (
        "content empty list",
        with_params(messages=[{"role": "user", "content": []}]),
        "params.messages[0].content is an empty list",
    ),
    # Content blocks.
    ("block not an object", with_content("hi"), "content[0] must be a content block object"),
    ("block type missing", with_content({"text": "hi"}), "content[0].type is missing"),
    ("block type unknown", with_content({"type": "txt"}), "'txt' is not a Messages API content"),
    ("block type suggestion", with_content({"type": "txt"}), "did you mean 'text'?"),
    ("block type not a string", with_content({"type": 1}), "content[0].type 1 is not"),
    ("text missing", with_content({"type": "text"}), "content[0].text is missing"),
    ("text a number", with_content({"type": "text", "text": 1}), "text must be a string"),
    ("image source missing", with_content({"type": "image"}), "content[0].source is missing"),
    ("image source unknown", with_content(image({"type": "ftp"})), "'ftp' is not an image source"),
    (
        "image media_type missing",
        with_content(image({"type": "base64", "data": PNG})),
        "source.media_type is missing; use one of image/jpeg, image/png",
    ),
    (
        "image media_type unsupported",
        with_content(image({"type": "base64", "media_type": "image/bmp", "data": PNG})),
        "source.media_type 'image/bmp' is not supported",
    ),
    (
        "image data missing",
        with_content(image({"type": "base64", "media_type": "image/png"})),
        "source.data is missing",
    ),
    (
        "image data not base64",
        with_content(image({"type": "base64", "media_type": "image/png", "data": "ab$d"})),
        "source.data is not valid base64",
    ),
    (
        "image data badly padded",
        with_content(image({"type": "base64", "media_type": "image/png", "data": "abc"})),
        "source.data is not valid base64",
    ),
    (
        "image data with line breaks",
        with_content(image({"type": "base64", "media_type": "image/png", "data": "QUJD\nRA=="})),
        "source.data is not valid base64",
    ),
    (
        "image data a data url",
        with_content(
            image({"type": "base64", "media_type": "image/png", "data": "data:image/png;base64,"})
        ),
        "is a data URL; remove the 'data:image/png;base64,' prefix",
    ),
    (
        "image media_type mismatch",
        with_content(image({"type": "base64", "media_type": "image/png", "data": JPEG})),
        'media_type is image/png but the data is image/jpeg; set "media_type": "image/jpeg"',
    ),
    (
        "image too big",
        with_content(
            image(
                {
                    "type": "base64",
                    "media_type": "image/png",
                    "data": "A" * (MAX_IMAGE_BASE64_BYTES + 4),
                }
            )
        ),
        "over the API's 10 MiB per-image limit",
    ),
    ("image url missing", with_content(image({"type": "url"})), "source.url must be a string"),
    ("image file_id missing", with_content(image({"type": "file"})), "file_id must be a string"),
    # system.
    ("system a number", with_params(system=1), "params.system must be a string or a list of"),
    (
        "system with an image",
        with_params(system=[{"type": "image"}]),
        'params.system[0] must be a text block {"type": "text"',
    ),
    (
        "system text missing",
        with_params(system=[{"type": "text"}]),
        "params.system[0].text is missing",
    ),
    # OpenAI-style lines.
    ("openai method GET", openai(method="GET"), "method 'GET' is not supported; use \"POST\""),
    ("openai method missing", openai(method=...), "method is missing; OpenAI-style lines need"),
    (
        "openai chat completions",
        openai(url="/v1/chat/completions"),
        "url '/v1/chat/completions' is not the Messages API; use \"/v1/messages\"",
    ),
    ("openai count tokens", openai(url="/v1/messages/count_tokens"), "is not the Messages API"),
    ("openai url missing", openai(url=...), 'url is missing; OpenAI-style lines need "url"'),
    ("openai body missing", openai(body=...), "body is missing"),
    ("openai body problems", openai(body={"max_tokens": 0}), "body.max_tokens is 0"),
    ("openai with params", openai(params={}), 'both "params" and "body"'),
    ("openai unknown key", openai(header={}), "unknown key 'header'"),
]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [case[1:] for case in INVALID_CASES],
    ids=[case[0] for case in INVALID_CASES],
)
def test_each_rule_reports_what_is_wrong(raw: bytes, fragment: str) -> None:
    result = invalid(raw)
    assert any(fragment in problem for problem in result.problems), result.problems


def test_every_problem_of_a_line_is_reported() -> None:
    raw = json.dumps(
        {
            "custom_id": "a b",
            "param": {},
            "params": {
                "max_tokens": True,
                "stream": True,
                "system": 3,
                "messages": [{"role": "bot", "content": [{"type": "txt"}]}, 5],
            },
        }
    ).encode()
    problems = invalid(raw).problems
    expected = [
        "unknown key 'param'",
        "custom_id 'a b' may only contain",
        "params.model is missing",
        "params.max_tokens must be an integer",
        "params.messages[0].role 'bot' is not allowed",
        "params.messages[0].content[0].type 'txt'",
        "params.messages[1] must be an object",
        "params.system must be a string",
        "params.stream is true",
    ]
    assert len(problems) == len(expected)
    for fragment, problem in zip(expected, problems, strict=True):
        assert fragment in problem


def test_problems_of_one_line_are_capped() -> None:
    raw = with_params(messages=[{"role": "x", "content": 1}] * 1000)
    problems = invalid(raw).problems
    assert len(problems) == MAX_PROBLEMS_PER_LINE + 1
    assert problems[-1].startswith("… more problems on this line")


def test_the_custom_id_is_kept_when_only_params_are_wrong() -> None:
    assert invalid(with_params(max_tokens=0)).custom_id == "req-1"


@pytest.mark.parametrize(
    "raw",
    [line(custom_id="a b"), line(custom_id="x" * 65), b"{", line(custom_id=7)],
    ids=["bad characters", "too long", "no json", "not a string"],
)
def test_the_custom_id_is_dropped_when_it_is_invalid(raw: bytes) -> None:
    assert invalid(raw).custom_id is None


def test_a_line_over_the_size_limit_names_its_size_and_is_not_parsed() -> None:
    result = invalid(b"x" * 101, max_line_bytes=100)
    assert result.problems == (
        "line is 101 bytes, over the limit of 100 bytes for one request; "
        "make the request smaller (fewer or smaller images and documents)",
    )


def test_a_line_at_the_size_limit_is_accepted() -> None:
    raw = line()
    valid(raw, max_line_bytes=len(raw))


def test_a_valid_line_gives_its_fields_and_compact_params_json() -> None:
    result = valid(line(custom_id="A_z-09"))
    assert result.custom_id == "A_z-09"
    assert result.model == "claude-sonnet-4-5"
    assert result.max_tokens == 1024
    assert result.params == GOOD_PARAMS
    assert result.params_json == json.dumps(GOOD_PARAMS, separators=(",", ":"))


def test_unknown_params_keys_are_kept_in_params_json() -> None:
    extra = {
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "metadata": {"user_id": "u-1"},
        "provider": {"order": ["anthropic"], "allow_fallbacks": False},
        "temperature": 0.25,
        "stream": False,
    }
    result = valid(with_params(**extra))
    assert json.loads(result.params_json) == {**GOOD_PARAMS, **extra}


def test_non_ascii_text_is_kept_as_is_in_params_json() -> None:
    result = valid(with_params(messages=[{"role": "user", "content": "Grüße 🌍"}]))
    assert "Grüße 🌍" in result.params_json


def test_the_default_model_fills_in_a_missing_model() -> None:
    result = valid(with_params(model=...), default_model="claude-haiku-4-5")
    assert result.model == "claude-haiku-4-5"
    assert result.params["model"] == "claude-haiku-4-5"
    assert json.loads(result.params_json)["model"] == "claude-haiku-4-5"


def test_the_name_kept_for_an_endpoints_limits_is_no_default_model() -> None:
    found = invalid(with_params(model=...), default_model="(all models)")
    assert any('"(all models)" is reserved' in problem for problem in found.problems)


def test_the_default_model_does_not_override_an_explicit_or_invalid_model() -> None:
    assert valid(line(), default_model="other").model == "claude-sonnet-4-5"
    invalid(with_params(model=""), default_model="other")


@pytest.mark.parametrize(
    "raw",
    [
        openai(),
        openai(url="/messages"),
        openai(url="https://api.anthropic.com/v1/messages"),
        openai(url="https://gateway.example/anthropic/eu/v1/messages"),
    ],
    ids=["v1 path", "bare path", "full url", "gateway url"],
)
def test_openai_style_lines_use_body_as_params(raw: bytes) -> None:
    result = valid(raw)
    assert result.params == GOOD_PARAMS


@pytest.mark.parametrize(
    "block",
    [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}},
        image({"type": "base64", "media_type": "image/png", "data": PNG}),
        image({"type": "base64", "media_type": "image/jpeg", "data": JPEG}),
        # Data that is not a recognisable image is left for the API to judge.
        image({"type": "base64", "media_type": "image/webp", "data": "aGVsbG8="}),
        image({"type": "url", "url": "https://example.com/cat.png"}),
        image({"type": "file", "file_id": "file_011"}),
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "tool_reference"}]},
        *({"type": name} for name in sorted(CONTENT_BLOCK_TYPES - {"text", "image"})),
    ],
    ids=lambda block: str(block["type"]),
)
def test_known_content_blocks_are_accepted(block: dict[str, Any]) -> None:
    valid(with_content(block))


@pytest.mark.parametrize(
    "system",
    ["Be brief.", [], [{"type": "text", "text": "Be brief.", "cache_control": {"type": "x"}}]],
)
def test_a_system_prompt_may_be_a_string_or_text_blocks(system: Any) -> None:
    valid(with_params(system=system))


def test_an_assistant_prefill_with_string_content_is_accepted() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]
    valid(with_params(messages=messages))


# Arbitrary JSON, and objects shaped like request lines with arbitrary values in each place.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
block_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["text", "image", "tool_use", "nope"]) | json_values,
        "text": json_values,
        "source": st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["base64", "url", "file"]) | json_values,
                "media_type": st.sampled_from(["image/png", "image/jpeg"]) | json_values,
                "data": st.sampled_from([PNG, JPEG, "", "data:x", "@@"]) | json_values,
                "url": json_values,
                "file_id": json_values,
            },
        )
        | json_values,
    },
)
message_like = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant"]) | json_values,
        "content": st.lists(block_like | json_values, max_size=3) | json_values,
    },
)
params_like = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just("m") | json_values,
        "max_tokens": st.integers() | json_values,
        "messages": st.lists(message_like | json_values, max_size=3) | json_values,
        "system": st.lists(block_like, max_size=2) | json_values,
        "stream": json_values,
    },
)
line_like = st.fixed_dictionaries(
    {},
    optional={
        "custom_id": st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True) | json_values,
        "params": params_like | json_values,
        "body": params_like,
        "method": st.just("POST") | json_values,
        "url": st.just("/v1/messages") | json_values,
        "extra": json_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(line_like | json_values, st.none() | st.just("default-model"))
def test_any_json_gives_a_result_and_never_raises(obj: Any, default_model: str | None) -> None:
    result = validate_line(json.dumps(obj).encode(), 1, default_model=default_model)
    if isinstance(result, InvalidLine):
        assert result.problems
        assert all(isinstance(problem, str) and problem for problem in result.problems)
    else:
        assert json.loads(result.params_json) == result.params


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_result_and_never_raise(raw: bytes) -> None:
    assert isinstance(validate_line(raw, 1), InvalidLine | ValidRequest)


# Lines of the common shape (what _common_request takes without wording anything), and at
# each of its edges one step off it: the full checks must decide those, with their messages.
def mostly(good: st.SearchStrategy[Any], off: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else ``off``: lines near the shape, often on it."""
    return st.one_of(good, good, good, off)


text_block = st.fixed_dictionaries(
    {"type": mostly(st.just("text"), st.sampled_from(["image", "tool_use"]) | json_values)},
    optional={"text": mostly(st.text(max_size=8), json_values), "cache_control": json_values},
)
plain_content = mostly(
    st.text(max_size=8) | st.lists(text_block, min_size=1, max_size=2), json_values
)
common_like = st.fixed_dictionaries(
    {
        "custom_id": mostly(
            st.sampled_from(["r1", "a" * 64]), st.sampled_from(["a" * 65, "", "a b", "é"])
        ),
        "params": mostly(
            st.fixed_dictionaries(
                {
                    "model": mostly(
                        st.sampled_from(["m", "m" * 200]),
                        st.sampled_from([" ", "", ALL_MODELS, "m" * 201]) | json_values,
                    ),
                    "max_tokens": mostly(
                        st.sampled_from([1, 2**31 - 1]),
                        st.sampled_from([0, -1, 2**31, True, 1.0, "5"]),
                    ),
                    "messages": mostly(
                        st.lists(
                            st.fixed_dictionaries(
                                {
                                    "role": mostly(
                                        st.sampled_from(["user", "assistant"]),
                                        st.just("system") | json_values,
                                    ),
                                    "content": plain_content,
                                },
                            ),
                            min_size=1,
                            max_size=3,
                        ),
                        json_values,
                    ),
                },
                optional={
                    "system": plain_content,
                    "stream": mostly(st.just(False), json_values),
                    "metadata": json_values,
                },
            ),
            json_values,
        ),
    },
    optional={"extra": json_values},
)


@settings(max_examples=500, deadline=None)
@given(common_like, st.none() | st.just("default-model"))
def test_lines_near_the_common_shape_get_what_the_full_checks_give(
    obj: Any, default_model: str | None
) -> None:
    raw = json.dumps(obj).encode()
    assume(b"Infinity" not in raw)  # not JSON: refused before any check
    expected = check_parsed_line(orjson.loads(raw), 7, default_model=default_model)
    assert validate_line(raw, 7, default_model=default_model) == expected


@pytest.mark.parametrize(
    "raw",
    [
        line(custom_id="a" * 65),
        line(custom_id="a b"),
        line(custom_id=""),
        line(extra=1),
        line(body={}),
        with_params(model=ALL_MODELS),
        with_params(model=" "),
        with_params(model="m" * 201),
        with_params(model=...),
        with_params(max_tokens=0),
        with_params(max_tokens=2**31),
        with_params(max_tokens=True),
        with_params(max_tokens=1.0),
        with_params(messages=[]),
        with_params(messages=[{"role": "system", "content": "Hi"}]),
        with_params(messages=[{"role": "user"}]),
        with_params(messages=[{"role": "user", "content": []}]),
        with_params(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]),
        with_params(messages=[{"role": "user", "content": [{"type": "txt", "text": "a"}]}]),
        with_content(image({"type": "base64", "media_type": "image/png", "data": PNG})),
        with_params(system=None),
        with_params(system=[]),
        with_params(system=[{"type": "image"}]),
        with_params(stream=True),
        with_params(stream=None),
    ],
)
def test_each_step_off_the_common_shape_gets_what_the_full_checks_give(raw: bytes) -> None:
    expected = check_parsed_line(orjson.loads(raw), 3, default_model="default-model")
    assert validate_line(raw, 3, default_model="default-model") == expected
    assert _common_request(orjson.loads(raw)) is None or isinstance(expected, ValidRequest)


@pytest.mark.parametrize(
    "raw",
    [
        with_params(),
        with_params(system="Be brief."),
        with_params(system=[{"type": "text", "text": "Be brief.", "cache_control": {}}]),
        with_params(messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]),
        with_params(stream=False, metadata={"user_id": "u"}),
    ],
)
def test_lines_of_the_common_shape_skip_the_full_checks(raw: bytes) -> None:
    """The fast path takes these (if it took none, it would cost without saving)."""
    obj = orjson.loads(raw)
    assert _common_request(obj) == check_parsed_line(obj, 1)
    assert isinstance(_common_request(obj), ValidRequest)
