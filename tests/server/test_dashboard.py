"""The dashboard over HTTP against a real `batchrun serve`: signing in, whose batches the
pages show, the security headers, and the data the pages draw."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchrun.input.ingest import submit_requests
from batchrun.server.dashboard import (
    ASSETS,
    KEEP_PER_COST,
    MIN_KEEP_S,
    PAGES,
    WRONG_KEY_MESSAGE,
    _Kept,
)
from batchrun.server.keys import SESSION_COOKIE, key_id
from batchrun.server.running import Server
from tests.conftest import jsonl, request_line
from tests.server.serving import KEY_A, KEY_B, running_server, server_env

BATCHES = "/v1/messages/batches"
DATA = "/dashboard/api/batches"
STATIC_DIR = Path(__file__).parents[2] / "batchrun" / "server" / "static"
WAIT_S = 30.0


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[tuple[str, Server]]:
    home = tmp_path / "home"
    home.mkdir()
    # A limit on the in-process simulator, so that the batch data has limits to show.
    config = tmp_path / "batchrun.toml"
    config.write_text('[endpoints.simulator.limits."*"]\nrpm = 6000\notpm = 900000\n')
    with running_server(db_url, server_env(home), config=config) as running:
        yield running


def _create(base: str, key: str, lines: list[dict[str, Any]]) -> str:
    response = httpx.post(base + BATCHES, json={"requests": lines}, headers={"x-api-key": key})
    assert response.status_code == 200, response.text
    batch_id: str = response.json()["id"]
    return batch_id


def _ended(base: str, key: str, batch_id: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        batch = httpx.get(f"{base}{BATCHES}/{batch_id}", headers={"x-api-key": key}).json()
        if batch["processing_status"] == "ended":
            return
        time.sleep(0.1)
    raise AssertionError(f"{batch_id} did not end within {WAIT_S} s")


@contextmanager
def _signed_in(base: str, key: str) -> Iterator[httpx.Client]:
    """A client holding the session cookie of ``key``."""
    with httpx.Client(base_url=base) as client:
        response = client.post("/login", data={"key": key})
        assert response.status_code == 303
        yield client


def test_login_sets_a_session_cookie_that_is_not_the_key(
    served: tuple[str, Server],
) -> None:
    base, _ = served
    with httpx.Client(base_url=base) as client:
        form = client.get("/")
        assert form.status_code == 200
        assert 'action="/login"' in form.text
        assert 'name="key"' in form.text

        response = client.post("/login", data={"key": KEY_A})

        assert response.status_code == 303
        assert response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(SESSION_COOKIE + "=")
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        assert "secure" not in attributes  # plain http here; set over https
        value = client.cookies[SESSION_COOKIE]
        assert KEY_A not in value
        page = client.get("/")
        assert page.status_code == 200
        assert "/dashboard/static/list.js" in page.text
        assert client.get(DATA).status_code == 200


def test_a_wrong_key_gets_the_form_again_with_401_and_no_cookie(
    served: tuple[str, Server],
) -> None:
    base, _ = served
    with httpx.Client(base_url=base) as client:
        response = client.post("/login", data={"key": "not-a-key-of-this-server"})

        assert response.status_code == 401
        assert WRONG_KEY_MESSAGE in response.text
        assert 'action="/login"' in response.text
        assert "set-cookie" not in response.headers
        assert "not-a-key-of-this-server" not in response.text
        # A forged cookie signs nobody in.
        client.cookies.set(SESSION_COOKIE, "key_0123456789abcdef.00")
        assert client.get(DATA).status_code == 401
        assert 'action="/login"' in client.get("/").text


def test_logout_ends_the_session(served: tuple[str, Server]) -> None:
    base, _ = served
    with _signed_in(base, KEY_A) as client:
        response = client.post("/logout")

        assert response.status_code == 303
        assert SESSION_COOKIE not in client.cookies
        assert client.get(DATA).status_code == 401


def test_a_form_posted_from_another_site_is_refused(served: tuple[str, Server]) -> None:
    base, _ = served
    for origin in ("http://evil.example", "null"):
        response = httpx.post(base + "/login", data={"key": KEY_A}, headers={"origin": origin})
        assert response.status_code == 403
        assert "set-cookie" not in response.headers
    same = httpx.post(base + "/login", data={"key": KEY_A}, headers={"origin": base})
    assert same.status_code == 303


def test_login_returns_to_the_batch_page_it_came_from_and_nowhere_else(
    served: tuple[str, Server],
) -> None:
    base, _ = served
    batch_id = _create(base, KEY_A, [request_line("a")])

    form = httpx.get(f"{base}/batches/{batch_id}")
    back = httpx.post(base + "/login", data={"key": KEY_A, "next": f"/batches/{batch_id}"})
    away = httpx.post(base + "/login", data={"key": KEY_A, "next": "//evil.example/"})

    assert form.status_code == 200
    assert f'name="next" value="/batches/{batch_id}"' in form.text
    assert back.headers["location"] == f"/batches/{batch_id}"
    assert away.headers["location"] == "/"


def test_the_data_shows_only_the_batches_of_the_signed_in_key(
    served: tuple[str, Server],
) -> None:
    base, _ = served
    mine = _create(base, KEY_A, [request_line(f"a{i}") for i in range(3)])
    theirs = _create(base, KEY_B, [request_line("b0")])
    _ended(base, KEY_A, mine)

    with _signed_in(base, KEY_A) as client:
        by_cookie = client.get(DATA).json()
    by_header = httpx.get(base + DATA, headers={"x-api-key": KEY_B}).json()
    by_bearer = httpx.get(base + DATA, headers={"authorization": f"Bearer {KEY_A}"}).json()

    assert [batch["id"] for batch in by_cookie["batches"]] == [mine]
    assert [batch["id"] for batch in by_header["batches"]] == [theirs]
    assert [batch["id"] for batch in by_bearer["batches"]] == [mine]
    (card,) = by_cookie["batches"]
    assert card["total"] == 3
    assert card["done"] == 3
    assert card["request_counts"]["succeeded"] == 3
    assert card["state"] == "ended"
    assert card["cost_usd"] > 0
    assert by_cookie["auth_required"] is True


def test_another_keys_batch_is_answered_as_an_unknown_one(served: tuple[str, Server]) -> None:
    base, _ = served
    theirs = _create(base, KEY_B, [request_line("b0")])
    unknown = "msgbatch_0000000000000000000000"

    with _signed_in(base, KEY_A) as client:
        other = client.get(f"{DATA}/{theirs}")
        missing = client.get(f"{DATA}/{unknown}")
        page = client.get(f"/batches/{theirs}")
        own = httpx.get(f"{base}{DATA}/{theirs}", headers={"x-api-key": KEY_B})

    assert other.status_code == missing.status_code == 404
    assert other.json()["error"]["type"] == missing.json()["error"]["type"] == "not_found_error"
    assert page.status_code == 404
    assert own.status_code == 200


def test_without_a_session_the_data_is_401_and_the_pages_ask_to_sign_in(
    served: tuple[str, Server],
) -> None:
    base, _ = served
    batch_id = _create(base, KEY_A, [request_line("a")])

    data = httpx.get(base + DATA)
    one = httpx.get(f"{base}{DATA}/{batch_id}")
    wrong = httpx.get(base + DATA, headers={"x-api-key": "key-c-0123456789abcdef"})
    page = httpx.get(f"{base}/batches/{batch_id}")

    assert data.status_code == one.status_code == wrong.status_code == 401
    assert data.json()["error"]["type"] == "authentication_error"
    assert 'action="/login"' in page.text
    assert "/dashboard/static/batch.js" not in page.text


def test_every_dashboard_response_carries_the_content_security_policy(
    served: tuple[str, Server],
) -> None:
    base, _ = served
    batch_id = _create(base, KEY_A, [request_line("a")])
    with _signed_in(base, KEY_A) as client:
        responses = [
            client.get("/"),
            client.get(f"/batches/{batch_id}"),
            client.get(DATA),
            client.get(f"{DATA}/{batch_id}"),
            client.get("/dashboard/static/list.js"),
            httpx.get(base + "/"),  # the login form
        ]
    for response in responses:
        policy = response.headers["content-security-policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert "unsafe" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    assert responses[0].headers["cache-control"] == "no-store"
    assert responses[2].headers["cache-control"] == "no-store"


def test_the_pages_load_nothing_from_elsewhere_and_run_no_inline_script() -> None:
    for name in (*PAGES, *ASSETS):
        text = (STATIC_DIR / name).read_text()
        # No absolute URL but the SVG namespace (an identifier, never fetched).
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert urls == set(), f"{name} refers to {urls}"
        assert "@import" not in text and "url(" not in text, name
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, name
        assert "eval(" not in text and "new Function" not in text, name
    for name in PAGES:
        text = (STATIC_DIR / name).read_text()
        for tag in re.findall(r"<script[^>]*>", text):
            assert 'src="/dashboard/static/' in tag, f"{name}: inline script {tag}"
        assert "<style" not in text and " style=" not in text, name
        assert re.search(r"\son[a-z]+=", text) is None, f"{name}: inline event handler"


def test_static_files_are_served_by_name_only(served: tuple[str, Server]) -> None:
    base, _ = served

    css = httpx.get(base + "/dashboard/static/dashboard.css")
    js = httpx.get(base + "/dashboard/static/batch.js")
    other = httpx.get(base + "/dashboard/static/dashboard.py")
    sneaky = httpx.get(base + "/dashboard/static/..%2Fdashboard.py")

    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert other.status_code == sneaky.status_code == 404


def test_no_key_appears_in_any_response(served: tuple[str, Server]) -> None:
    base, _ = served
    batch_id = _create(base, KEY_A, [request_line("a"), request_line("b")])
    _ended(base, KEY_A, batch_id)
    seen: list[httpx.Response] = []
    with httpx.Client(base_url=base, event_hooks={"response": [seen.append]}) as client:
        client.get("/")
        client.post("/login", data={"key": KEY_B + "x"})
        client.post("/login", data={"key": KEY_A, "next": f"/batches/{batch_id}"})
        client.get(f"/batches/{batch_id}")
        client.get(DATA)
        client.get(f"{DATA}/{batch_id}")
        for name in ASSETS:
            client.get(f"/dashboard/static/{name}")
        client.get(DATA, headers={"x-api-key": KEY_A})
        client.post("/logout")
    assert len(seen) >= 9
    for response in seen:
        response.read()
        everything = response.text + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
        for key in (KEY_A, KEY_B):
            assert key not in everything, f"{response.request.url.path} shows a key"


def test_the_batch_data_has_the_series_the_limits_and_the_latest_errors(
    served: tuple[str, Server],
) -> None:
    base, _ = served
    lines = [request_line(f"ok{i}") for i in range(6)]
    lines += [request_line(f"bad{i}", "[[sim:status=400]] no") for i in range(2)]
    batch_id = _create(base, KEY_A, lines)
    _ended(base, KEY_A, batch_id)

    body = httpx.get(f"{base}{DATA}/{batch_id}", headers={"x-api-key": KEY_A}).json()

    assert body["batch"]["id"] == batch_id
    assert body["batch"]["error_types"] == [{"type": "invalid_request_error", "count": 2}]
    assert body["models"] == ["claude-sonnet-4-5"]
    points = body["series"]["points"]
    assert sum(point["requests"] for point in points) == 8
    assert sum(point["errored"] for point in points) == 2
    assert sum(point["output_tokens"] for point in points) > 0
    assert body["series"]["partial_last"] is False
    limits = {limit["dimension"]: limit for limit in body["limits"]}
    assert limits["rpm"]["configured"] == 6000
    assert limits["rpm"]["measures"] == "requests"
    assert limits["otpm"]["measures"] == "output_tokens"
    assert sorted(error["custom_id"] for error in body["latest_errors"]) == ["bad0", "bad1"]
    assert {error["http_status"] for error in body["latest_errors"]} == {400}


def test_without_keys_everyone_sees_the_batches_made_without_a_key(
    db_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with running_server(db_url, {"HOME": str(home)}, insecure_no_auth=True) as (base, _):
        batch_id = _create(base, "", [request_line("a")])

        page = httpx.get(base + "/")
        data = httpx.get(base + DATA).json()
        login = httpx.post(base + "/login", data={"key": ""})

    assert "/dashboard/static/list.js" in page.text
    assert [batch["id"] for batch in data["batches"]] == [batch_id]
    assert data["auth_required"] is False
    assert login.status_code == 303
    assert "set-cookie" not in login.headers


def test_the_data_is_computed_once_a_second_at_most_however_many_ask(
    served: tuple[str, Server],
) -> None:
    base, server = served
    headers = {"x-api-key": KEY_A}
    first = _create(base, KEY_A, [request_line("a")])
    before = httpx.get(base + DATA, headers=headers).json()
    # Straight into the store: well within the second the list is kept.
    second = submit_requests(
        server.store,
        io.BytesIO(jsonl([request_line("b")])),
        source="t",
        endpoint="simulator",
        now=datetime.now(UTC),
        owner=key_id(KEY_A),
    )

    kept = httpx.get(base + DATA, headers=headers).json()
    # Another question (another page size) is computed afresh, so the store has the batch:
    # the list above was kept. When a kept answer expires is proven in virtual time below.
    other = httpx.get(base + DATA, headers=headers, params={"limit": 10}).json()

    assert kept == before
    assert [batch["id"] for batch in kept["batches"]] == [first]
    assert [batch["id"] for batch in other["batches"]] == [second, first]
    assert other["now"] > kept["now"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_answer_is_kept_a_second_or_five_times_what_it_cost_and_shared_meanwhile() -> None:
    kept = _Kept()
    key = ("list", None, "50")
    cost_s = 0.0
    computed = 0

    async def compute() -> bytes:
        nonlocal computed
        computed += 1
        answer = str(computed).encode()
        await asyncio.sleep(cost_s)
        return answer

    assert await kept.get(key, compute) == b"1"
    await asyncio.sleep(MIN_KEEP_S - 0.01)
    assert await kept.get(key, compute) == b"1"
    await asyncio.sleep(0.02)
    assert await kept.get(key, compute) == b"2"

    # Ten askers while an answer that takes 1 s is computed: one computation for all, and
    # it is kept KEEP_PER_COST times as long as it took.
    await asyncio.sleep(MIN_KEEP_S + 0.01)
    cost_s = 1.0
    asked = await asyncio.gather(*(kept.get(key, compute) for _ in range(10)))
    assert asked == [b"3"] * 10
    await asyncio.sleep(KEEP_PER_COST * cost_s - 0.01)
    assert await kept.get(key, compute) == b"3"
    await asyncio.sleep(0.02)
    assert await kept.get(key, compute) == b"4"
