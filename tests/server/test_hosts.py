"""DNS rebinding and forged Hosts, over a real socket: without keys the server answers only to
loopback names, its --public-url host and --allowed-hosts (421 otherwise, before any route);
with keys, results_url never names a Host the client made up."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchrun.errors import ConfigError
from batchrun.server.hosts import HostPolicy, host_name
from tests.conftest import request_line
from tests.server.serving import KEY_A, running_server, server_env

BATCHES = "/v1/messages/batches"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def serve(home: Path, *, keys: bool, **options: Any) -> Any:
    env = server_env(home) if keys else {"HOME": str(home)}
    return running_server(
        f"sqlite:///{home / 'batchrun.db'}", env, workers=0, insecure_no_auth=not keys, **options
    )


def get(url: str, path: str, host: str | None, **headers: str) -> httpx.Response:
    """GET ``path`` from the server at ``url`` (a loopback socket) saying ``Host: host``."""
    if host is not None:
        headers["host"] = host
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.get(path, headers=headers)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
def keyless(home: Path) -> Iterator[str]:
    with serve(home, keys=False, allowed_hosts=("my-box.lan",)) as (url, _server):
        yield url


@pytest.mark.parametrize("path", [BATCHES, "/", "/metrics", "/openapi.json"])
@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example"]
)
def test_without_keys_a_foreign_host_is_421_on_every_route(
    keyless: str, path: str, host: str
) -> None:
    response = get(keyless, path, host)
    assert response.status_code == 421, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "DNS rebinding" in body["error"]["message"]
    assert "--allowed-hosts" in body["error"]["message"]
    assert response.headers["request-id"] == body["request_id"]


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:{port}", "127.0.0.1:{port}", "[::1]:{port}", "my-box.lan:80"]
)
def test_without_keys_loopback_names_and_allowed_hosts_are_served(keyless: str, host: str) -> None:
    response = get(keyless, BATCHES, host.format(port=port_of(keyless)))
    assert response.status_code == 200, response.text


def test_without_keys_a_request_without_a_host_header_is_refused(keyless: str) -> None:
    with socket.create_connection(("127.0.0.1", port_of(keyless)), timeout=30) as raw:
        raw.sendall(b"GET /v1/messages/batches HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 421 "), answer[:200]
    assert b"no Host header" in answer


def ended_batch(url: str) -> str:
    """A batch created and canceled (so ended) through the API; its id."""
    with httpx.Client(base_url=url, headers={"x-api-key": KEY_A}, timeout=30) as client:
        created = client.post(BATCHES, json={"requests": [request_line("a")]})
        assert created.status_code == 200, created.text
        batch_id: str = created.json()["id"]
        assert client.post(f"{BATCHES}/{batch_id}/cancel").status_code == 200
        return batch_id


@pytest.mark.parametrize("host", ["evil.example", "evil.example:443", "localhost:1"])
def test_with_keys_results_url_never_names_a_forged_host(home: Path, host: str) -> None:
    with serve(home, keys=True) as (url, _server):
        batch_id = ended_batch(url)
        retrieved = get(url, f"{BATCHES}/{batch_id}", host, **{"x-api-key": KEY_A})
        listed = get(url, BATCHES, host, **{"x-api-key": KEY_A})
    assert retrieved.status_code == 200, retrieved.text
    assert retrieved.json()["processing_status"] == "ended"
    expected = f"{url}{BATCHES}/{batch_id}/results"
    assert retrieved.json()["results_url"] == expected
    assert listed.json()["data"][0]["results_url"] == expected


def test_with_keys_and_allowed_hosts_those_names_build_results_url_and_others_are_421(
    home: Path,
) -> None:
    with serve(home, keys=True, allowed_hosts=("batches.example.com",)) as (url, _server):
        with httpx.Client(
            base_url=url,
            headers={"x-api-key": KEY_A, "host": "batches.example.com"},
            timeout=30,
        ) as client:
            created = client.post(BATCHES, json={"requests": [request_line("a")]})
            assert created.status_code == 200, created.text
            batch_id = created.json()["id"]
            ended = client.post(f"{BATCHES}/{batch_id}/cancel").json()
        forged = get(url, f"{BATCHES}/{batch_id}", "evil.example", **{"x-api-key": KEY_A})
        loopback = get(url, f"{BATCHES}/{batch_id}", None, **{"x-api-key": KEY_A})
    assert ended["results_url"] == f"http://batches.example.com{BATCHES}/{batch_id}/results"
    assert forged.status_code == 421
    assert "--allowed-hosts" in forged.json()["error"]["message"]
    # The loopback address it listens on is not allowed either, once names are listed.
    assert loopback.status_code == 421


def test_with_a_public_url_results_url_names_it_whatever_the_host(home: Path) -> None:
    public = "https://batches.example.com/api"
    with serve(home, keys=True, public_url=public) as (url, _server):
        batch_id = ended_batch(url)
        retrieved = get(url, f"{BATCHES}/{batch_id}", "evil.example", **{"x-api-key": KEY_A})
    assert retrieved.json()["results_url"] == f"{public}{BATCHES}/{batch_id}/results"


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost.:8000", "localhost"),
        ("[::1]:8000", "[::1]"),
        ("127.0.0.1", "127.0.0.1"),
        ("evil.example:80", "evil.example"),
        ("::1", None),
        ("[::1", None),
        ("a b", None),
        ("x:port", None),
        ("", None),
        ("evil.example/path", None),
    ],
)
def test_host_names_are_read_without_port_and_case(value: str, name: str | None) -> None:
    assert host_name(value) == name


@pytest.mark.parametrize(
    ("authenticated", "allowed", "fragment"),
    [
        (False, ["*"], "DNS rebinding"),
        (True, ["https://x.example/"], "is not a host name"),
        (True, ["a b"], "is not a host name"),
    ],
)
def test_unusable_allowed_hosts_are_refused(
    authenticated: bool, allowed: list[str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        HostPolicy.of(authenticated=authenticated, public_url=None, allowed_hosts=allowed)


def test_a_star_with_keys_serves_and_trusts_any_host() -> None:
    policy = HostPolicy.of(authenticated=True, public_url=None, allowed_hosts=["*"])
    assert policy.serves("anything.example") and policy.trusts("anything.example")
