"""A Messages endpoint that answers with a redirect to another origin: the key, the
``headers_env`` value and cookies never reach it (no Messages or count_tokens call follows a
redirect: httpx strips only ``Authorization`` on a cross-origin redirect, never
``x-api-key``). A guard: it held before the batch lane's results downloads were changed, and
must keep holding if anyone turns redirects on."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.cli.test_run_endpoints import invoke
from tests.conftest import cli_env, jsonl, request_line
from tests.hostile import HostileServer, running_hostile_server

KEY = "sk-redirect-key-0123456789"
TOKEN = "redirect-gateway-token-0123"


@pytest.fixture
def foreign() -> Iterator[HostileServer]:
    with running_hostile_server() as running:
        yield running


@pytest.fixture
def redirector(foreign: HostileServer) -> Iterator[str]:
    """A server that answers every request with a 307 to ``foreign`` (and sets a cookie)."""

    class Redirect(BaseHTTPRequestHandler):
        def _moved(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(307)
            self.send_header("location", f"{foreign.url}{self.path}")
            self.send_header("set-cookie", "session=redirect-cookie-0123456789; Path=/")
            self.send_header("content-length", "0")
            self.end_headers()

        do_GET = do_POST = _moved

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_messages_redirect_to_another_origin_is_not_followed_with_any_credential(
    tmp_path: Path,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    redirector: str,
    foreign: HostileServer,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "batchrun.toml").write_text(
        f'[endpoints.gw]\nbase_url = "{redirector}"\napi_key_env = "GW_KEY"\nmax_attempts = 1\n'
        '[endpoints.gw.headers_env]\nx-gateway-token = "GW_TOKEN"\n'
    )
    cli = CliRunner(env=cli_env(db_url, tmp_path / "home") | {"GW_KEY": KEY, "GW_TOKEN": TOKEN})
    (tmp_path / "requests.jsonl").write_bytes(jsonl([request_line("a"), request_line("b")]))
    submitted = invoke(cli, "submit", str(tmp_path / "requests.jsonl"), "--endpoint", "gw")
    assert submitted.exit_code == 0, submitted.output

    ran = invoke(cli, "run", submitted.stdout.strip(), "--count-tokens")
    shown = json.loads(invoke(cli, "status", submitted.stdout.strip(), "--json").stdout)

    assert foreign.log == [], "nothing follows the redirect"
    assert shown["request_counts"]["errored"] == 2, ran.output
    assert KEY not in ran.output and TOKEN not in ran.output
