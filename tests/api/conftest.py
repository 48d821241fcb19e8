"""The HTTP service on a real uvicorn (a thread of the test process), SQLite in tmp_path and
the in-memory broker: what each request enqueued is read back from the broker."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from delivery.api import create_app
from schemas import Settings
from tests.support.memory_broker import take_waiting
from tests.support.uvicorn_server import serving


def drain() -> list[dict[str, Any]]:
    """Every task message on the in-memory broker's delivery queue (emptied)."""
    return [{"task": m.task, "args": m.args} for m in take_waiting(timeout=0.05)]


def enqueued_ids(messages: list[dict[str, Any]]) -> list[str]:
    """The delivery ids the task messages carry (a batch carries several)."""
    ids = []
    for message in messages:
        body = message["args"][0]
        ids += [e["id"] for e in body] if isinstance(body, list) else [body["id"]]
    return ids


@dataclass
class Api:
    url: str
    key: str
    app: Any
    session: requests.Session

    def request(self, method: str, path: str, *, key: str | None = "", **kw: Any):
        headers = dict(kw.pop("headers", {}))
        chosen = self.key if key == "" else key
        if chosen is not None:
            headers["Authorization"] = f"Bearer {chosen}"
        return self.session.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def get(self, path: str, **kw: Any):
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any):
        return self.request("POST", path, **kw)


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    # A revoked key stops working at once here; in production within the cache's seconds.
    app = create_app(settings, key_cache_seconds=0)
    # An admin key: these tests read back deliveries written straight into the log.
    # test_teams.py checks what a key of one team may see of another's.
    _, key = app.state.api.keys.add("tests", admin=True)
    # POST /v1/deliveries refuses a channel that does not exist.
    app.state.api.assembly.channels.add("hooks", "webhook", {"secret": "whsec_" + "A" * 44})
    drain()
    with serving(app) as url, requests.Session() as session:
        yield Api(url, key, app, session)
    app.state.api.close()


def message(i: int = 0, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "channel": "hooks",
        "address": "https://example.com/hook",
        "payload": {"message": f"hello {i}", "data": {"i": i}},
    }
    doc.update(changes)
    return doc
