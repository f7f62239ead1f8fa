"""Whatever a client sends, `batchrun serve` answers with an Anthropic-style 4xx error body:
never a 500, never a traceback, and nothing half-stored."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun.input.validation import MAX_JSON_DEPTH
from tests.cli.test_deep_params import deep_line, deep_raw
from tests.conftest import request_line
from tests.server.serving import KEY_A, running_server, server_env

BATCHES = "/v1/messages/batches"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("serve")
    with running_server(f"sqlite:///{home / 'batchrun.db'}", server_env(home), workers=0) as (
        url,
        _server,
    ):
        yield url


@pytest.fixture
def http(served: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served, headers={"x-api-key": KEY_A}, timeout=30) as client:
        yield client


def assert_api_error(response: httpx.Response, status: int, error_type: str | None = None) -> str:
    """The response is Anthropic's error body with ``status``; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["type"] == "error"
    assert body["request_id"].startswith("req_")
    assert response.headers["request-id"] == body["request_id"]
    if error_type is not None:
        assert body["error"]["type"] == error_type
    message: str = body["error"]["message"]
    assert "Traceback" not in message and message
    return message


def stored(http: httpx.Client) -> int:
    return len(http.get(BATCHES, params={"limit": 1000}).json()["data"])


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"]
)
def test_a_body_that_is_not_declared_json_is_refused(http: httpx.Client, content_type: str) -> None:
    body = json.dumps({"requests": [request_line("a")]}).encode()
    response = http.post(BATCHES, content=body, headers={"content-type": content_type})
    assert "content-type" in assert_api_error(response, 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"", "empty"),
        (b"not json at all", "not valid JSON"),
        (b'{"requests": [{"custom_id": "a", "params": {"model": "m"', "not valid JSON"),
        (b'{"requests": [' + json.dumps(request_line("a")).encode() + b",", "after requests[0]"),
        (b"[]", "JSON object"),
        (b'"requests"', "JSON object"),
        (b"{}", "field required"),
        (b'{"requests": null}', "must be a list"),
        (b'{"requests": {"custom_id": "a"}}', "must be a list"),
        (b'{"requests": []}', "empty"),
        (b'{"requests": [1e999999]}', "requests"),
        (b"\xff\xfe{", "not valid JSON"),
    ],
)
def test_bodies_that_are_not_a_create_body_are_refused_and_nothing_is_stored(
    http: httpx.Client, body: bytes, said: str
) -> None:
    before = stored(http)
    response = http.post(BATCHES, content=body, headers={"content-type": "application/json"})
    assert said in assert_api_error(response, 400, "invalid_request_error")
    assert stored(http) == before


WRONG_REQUESTS: list[tuple[Any, str]] = [
    (5, "JSON object"),
    ("x", "JSON object"),
    (None, "JSON object"),
    ([], "JSON object"),
    ({"custom_id": 5, "params": request_line("a")["params"]}, "custom_id"),
    ({"custom_id": None, "params": request_line("a")["params"]}, "custom_id"),
    ({"custom_id": "", "params": request_line("a")["params"]}, "custom_id"),
    ({"custom_id": "x" * 65, "params": request_line("a")["params"]}, "custom_id"),
    ({"custom_id": "a"}, "params"),
    ({"custom_id": "a", "params": "x"}, "params"),
    ({"custom_id": "a", "params": []}, "params"),
    (request_line("a", model=5), "model"),  # type: ignore[arg-type]
    (request_line("a", max_tokens="10"), "max_tokens"),  # type: ignore[arg-type]
    (request_line("a", max_tokens=-1), "max_tokens"),
    (request_line("a", max_tokens=0), "max_tokens"),
    (request_line("a", max_tokens=10**30), "too large"),
    ({"custom_id": "a", "params": {**request_line("a")["params"], "messages": "hi"}}, "messages"),
    (
        {"custom_id": "a", "params": {**request_line("a")["params"], "messages": [{"role": 5}]}},
        "messages",
    ),
    ({"custom_id": "a", "params": {**request_line("a")["params"], "stream": True}}, "stream"),
]


@pytest.mark.parametrize(("item", "said"), WRONG_REQUESTS)
def test_a_wrong_type_in_any_field_names_the_request_and_stores_nothing(
    http: httpx.Client, item: Any, said: str
) -> None:
    before = stored(http)
    body = {"requests": [request_line("ok0"), item, request_line("ok2")]}
    message = assert_api_error(http.post(BATCHES, json=body), 400, "invalid_request_error")
    assert "requests[1]" in message and said in message
    assert "requests[0]" not in message and "requests[2]" not in message
    assert stored(http) == before


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 300, 5_000])
def test_params_nested_past_the_limit_are_400_naming_the_request(
    http: httpx.Client, levels: int
) -> None:
    before = stored(http)
    body = b'{"requests": [%s, %s]}' % (
        json.dumps(request_line("ok0")).encode(),
        deep_raw("deep", levels, kind="object"),
    )
    response = http.post(BATCHES, content=body, headers={"content-type": "application/json"})
    message = assert_api_error(response, 400, "invalid_request_error")
    assert message.startswith("requests[1]: params.metadata nests objects and arrays deeper")
    assert f"{MAX_JSON_DEPTH} levels" in message
    assert stored(http) == before


def test_a_request_at_the_depth_limit_with_long_keys_is_stored(http: httpx.Client) -> None:
    before = stored(http)
    long_keys: Any = {}
    for level in range(20):
        long_keys = {f"key_{level}_" + "x" * 150: long_keys}
    lines = [deep_line("edge", MAX_JSON_DEPTH), request_line("keys", metadata=long_keys)]
    response = http.post(BATCHES, json={"requests": lines})
    assert response.status_code == 200, response.text
    assert stored(http) == before + 1


def test_a_body_a_million_levels_deep_is_refused_at_once_without_reading_it_whole(
    http: httpx.Client,
) -> None:
    # 2 MB of "[": a parser that keeps every level's path would need terabytes.
    levels = 1_000_000
    body = b'{"requests": [' + b"[" * levels + b"]" * levels + b"]}"
    response = http.post(BATCHES, content=body, headers={"content-type": "application/json"})
    message = assert_api_error(response, 400, "invalid_request_error")
    assert message.startswith("requests[0]: line nests objects and arrays deeper")
    body = b'{"other": ' + b'{"a":' * levels + b"0" + b"}" * levels + b"}"
    response = http.post(BATCHES, content=body, headers={"content-type": "application/json"})
    assert "the body nests objects and arrays deeper" in assert_api_error(response, 400)


def test_megabyte_keys_over_many_small_arrays_are_refused_at_once(http: httpx.Client) -> None:
    # Each "[]" under a 1 MB key made the parser copy the 1 MB path: minutes for 3 MB.
    body = b'{"requests": [{"custom_id": "a", "params": {"%s": [%s]}}]}' % (
        b"k" * 1_000_000,
        b",".join([b"[]"] * 1_000_000),
    )
    response = http.post(BATCHES, content=body, headers={"content-type": "application/json"})
    message = assert_api_error(response, 400, "invalid_request_error")
    assert message.startswith("requests[0]: the keys on the way to an object or array")


def test_duplicate_custom_ids_name_both_requests(http: httpx.Client) -> None:
    body = {"requests": [request_line("same"), request_line("other"), request_line("same")]}
    message = assert_api_error(http.post(BATCHES, json=body), 400)
    assert "requests[2]" in message and "same" in message


@pytest.mark.parametrize(
    "path",
    [
        f"{BATCHES}/abc",
        f"{BATCHES}/msgbatch_",
        f"{BATCHES}/msgbatch_a%21b",
        f"{BATCHES}/msgbatch_{'a' * 5000}",
        f"{BATCHES}/msgbatch_unknown000000",
        f"{BATCHES}/msgbatch_unknown000000/results",
        f"{BATCHES}/..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_ids_of_the_wrong_shape_or_unknown_are_404(http: httpx.Client, path: str) -> None:
    assert_api_error(http.get(path), 404, "not_found_error")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "-1"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": str(10**30)},
        {"limit": "abc"},
        {"limit": ""},
        {"limit": "1.5"},
        {"before_id": "msgbatch_a", "after_id": "msgbatch_b"},
        {"before_id": "nope"},
        {"after_id": "msgbatch_notstored00"},
    ],
)
def test_list_parameters_out_of_range_are_400(http: httpx.Client, params: dict[str, str]) -> None:
    assert_api_error(http.get(BATCHES, params=params), 400, "invalid_request_error")


def test_unknown_routes_and_methods_answer_in_the_apis_shape(http: httpx.Client) -> None:
    assert_api_error(http.get("/v1/nothing"), 404, "not_found_error")
    assert_api_error(http.put(BATCHES), 405)
    assert_api_error(http.get(f"{BATCHES}/msgbatch_a/results", params={"partial": "maybe"}), 400)


def test_a_giant_header_is_refused_before_the_app_and_the_server_keeps_serving(
    served: str, http: httpx.Client
) -> None:
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(
            b"GET /v1/messages/batches HTTP/1.1\r\nHost: x\r\nx-api-key: "
            + b"k" * 200_000
            + b"\r\n\r\n"
        )
        answer = raw.recv(65536)
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    assert answer == b"" or 400 <= status < 500, answer[:200]
    # A header just under the limit reaches the app, which answers in its own shape.
    assert_api_error(http.get(BATCHES, headers={"x-api-key": "k" * 30_000}), 401)
    assert http.get(BATCHES).status_code == 200


def read_answer(raw: socket.socket) -> bytes:
    """An HTTP answer read whole: its head, then as many body bytes as it declares (it may
    come in several packets)."""
    answer = b""
    while b"\r\n\r\n" not in answer and (chunk := raw.recv(65536)):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length and (chunk := raw.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_declared_body_over_256_mb_is_413_before_it_is_read(served: str) -> None:
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(
            b"POST /v1/messages/batches HTTP/1.1\r\nHost: x\r\nx-api-key: "
            + KEY_A.encode()
            + b"\r\ncontent-type: application/json\r\ncontent-length: 300000000\r\n\r\n{"
        )
        answer = read_answer(raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["type"] == "request_too_large"


def test_a_body_cut_short_by_the_client_stores_nothing(served: str, http: httpx.Client) -> None:
    before = stored(http)
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(
            b"POST /v1/messages/batches HTTP/1.1\r\nHost: x\r\nx-api-key: "
            + KEY_A.encode()
            + b"\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n"
            + json.dumps({"requests": [request_line("a")]}).encode()[:60]
        )
        raw.shutdown(socket.SHUT_WR)
        raw.recv(65536)
    assert stored(http) == before
    assert http.get(BATCHES).status_code == 200


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    field=st.sampled_from(["custom_id", "params", "model", "max_tokens", "messages", "system"]),
    value=json_values,
)
def test_any_json_value_in_any_field_is_answered_without_a_server_error(
    http: httpx.Client, field: str, value: Any
) -> None:
    item: dict[str, Any] = request_line("fuzz")
    if field in ("custom_id", "params"):
        item[field] = value
    else:
        item["params"][field] = value
    response = http.post(BATCHES, json={"requests": [item]})
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert_api_error(response, 400, "invalid_request_error")
    else:
        http.post(f"{BATCHES}/{response.json()['id']}/cancel")


def test_the_openapi_document_describes_every_route_of_the_api(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert set(paths[BATCHES]) == {"get", "post"}
    assert set(paths[BATCHES + "/{message_batch_id}"]) == {"get", "delete"}
    assert set(paths[BATCHES + "/{message_batch_id}/cancel"]) == {"post"}
    assert set(paths[BATCHES + "/{message_batch_id}/results"]) == {"get"}
    create = paths[BATCHES]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["requests"]
    assert body["properties"]["requests"]["maxItems"] == 100_000
    assert {"400", "401", "404", "413"} <= set(create["responses"])
    names = {parameter["name"] for parameter in paths[BATCHES]["get"]["parameters"]}
    assert names == {"limit", "before_id", "after_id"}
    batch = document["components"]["schemas"]["BatchObject"]
    assert {"id", "processing_status", "request_counts", "results_url"} <= set(batch["properties"])
    assert "/metrics" not in paths and "/" not in paths


def test_a_body_larger_than_the_memory_spool_is_read_from_its_temporary_file(
    http: httpx.Client,
) -> None:
    from batchrun.server.api import SPOOL_MEMORY_BYTES

    text = "x" * 4000
    count = SPOOL_MEMORY_BYTES // 4000 + 200
    body = {"requests": [request_line(f"big{i}", f"{i} {text}") for i in range(count)]}
    response = http.post(BATCHES, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["request_counts"]["processing"] == count
    http.post(f"{BATCHES}/{response.json()['id']}/cancel")
