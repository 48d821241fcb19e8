"""A real local HTTP server standing in for a webhook receiver: verifies Standard Webhooks
signatures with the reference library and answers from a script."""

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 204
    headers: dict[str, str] | None = None
    body: bytes = b""


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, secret: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.verifier = Webhook(secret) if secret else None
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self.default = Answer(204)
        #: Optional: decides the answer for a path from the request (after any script).
        self.responder: Callable[[Received], Answer] | None = None
        #: Seconds to take over each request (to keep deliveries in flight).
        self.latency = 0.0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Workers killed mid-request by the crash tests reset their connections: expected.
        pass

    def url(self, path: str = "/hook") -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``path`` with these, then with the default."""
        with self.lock:
            self.scripts[path].extend(answers)

    def requests_to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def count_by_id(self) -> dict[str, int]:
        """How many requests arrived per webhook-id."""
        counts: dict[str, int] = defaultdict(int)
        with self.lock:
            for r in self.received:
                counts[r.headers.get("webhook-id", "")] += 1
        return dict(counts)

    def wait_for(
        self, count: int, path: str | None = None, timeout: float = 30.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = [r for r in self.received if path is None or r.path == path]
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise TimeoutError(f"expected {count} requests, got {len(got)}")


class _Handler(BaseHTTPRequestHandler):
    server: Receiver
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified = False
        if self.server.verifier is not None:
            try:
                self.server.verifier.verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        with self.server.lock:
            self.server.received.append(Received(self.path, headers, body, verified))
            received = self.server.received[-1]
            queue = self.server.scripts.get(self.path)
            scripted = queue.popleft() if queue else None
        responder = self.server.responder
        answer = scripted or (responder(received) if responder else self.server.default)
        if self.server.latency:
            time.sleep(self.server.latency)
        self.send_response(answer.status)
        for key, value in (answer.headers or {}).items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
