"""A real HTTP server on 127.0.0.1 that records the requests it gets, for webhook tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server that records POSTs and answers 500 to the first `fail_first`, then `status`."""

    port: int
    fail_first: int = 0
    status: int = 200
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    hang: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The webhook address."""
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, request: Received) -> int:
        """Record `request` and pick the status to answer it with."""
        with self.lock:
            self.requests.append(request)
            return 500 if len(self.requests) <= self.fail_first else self.status


def handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    """A request handler class reporting to `receiver`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - name required by http.server
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = receiver.answer(Received(self.path, dict(self.headers.items()), body))
            if receiver.hang:
                receiver.release.wait(timeout=10)
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
            """Keep the test output quiet."""

    return Handler


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A running receiver on an ephemeral port of 127.0.0.1, reached without any proxy; shut down after."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = Receiver(port=server.server_address[1])
    server.RequestHandlerClass = handler_for(state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
