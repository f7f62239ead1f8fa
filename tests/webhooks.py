"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 (``http.server`` in a
thread) that records every POST and answers the statuses a test scripts, then 200.

Its URLs carry a secret path, as Slack's and Teams' do (:data:`SECRET_PATH`), so a test can
check that nothing prints it. :func:`closed_port_url` is a URL nothing listens on.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The token part of a Slack-like webhook URL: never to be seen in a log or on a terminal.
SECRET_PATH = "/services/T0BATCHRUN/B0TEST/xoxb-s3cr3t-t0ken"
# What the receiver puts in the body of a failure, to prove the body is never shown.
BODY_MARKER = "receiver-body-with-the-token-xoxb-s3cr3t-t0ken"


@dataclass
class Post:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """The receiver; ``base`` once it listens."""

    base: str = ""
    # Statuses to answer first, in order (each with BODY_MARKER as body); then 200.
    statuses: list[int] = field(default_factory=list)
    posts: list[Post] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The webhook URL, secret path and query included."""
        return f"{self.base}{SECRET_PATH}?token=q-s3cr3t"

    @property
    def host(self) -> str:
        return self.base.removeprefix("http://")

    def delivered(self) -> list[Any]:
        """The documents answered with a 2xx, in order."""
        with self.lock:
            return [post.json() for post in self.posts if 200 <= post.status < 300]


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            with receiver.lock:
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.posts.append(
                    Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status)
                )
            answer = b"ok" if status < 300 else BODY_MARKER.encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


@contextmanager
def running_webhook_receiver(*statuses: int) -> Iterator[WebhookReceiver]:
    """A receiver on a free loopback port, answering ``statuses`` first, then 200."""
    receiver = WebhookReceiver(statuses=list(statuses))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.base = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll: shutdown() waits for it.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="webhook-receiver", daemon=True
    )
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port_url() -> str:
    """A webhook URL on a loopback port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{SECRET_PATH}"
