"""Events for many teams (issue 27): a key owns the events it publishes and every delivery
they make, and a test key's events make test deliveries. Through the real app on a real
server; the fan-out and the worker's service run in-process, on the same log and broker."""

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer

from delivery.api.ownership import is_owned, owned_event_id, owned_id
from delivery.engine.assembly import Assembly, assemble
from delivery.notifications import Notifier
from delivery.producer.events import event_id
from delivery.producer.publisher import get_publisher
from schemas import CHANNEL_NAME_PATTERN, Envelope, Settings
from schemas.events import Event
from tests.api.conftest import Api, drain


@pytest.fixture
def worker(api: Api, settings: Settings) -> Iterator[Assembly]:
    """A worker's engine on the API's log (whose fixture made the ``hooks`` channel)."""
    engine = assemble(settings, channel_ttl=0)
    yield engine
    engine.close()


def _keys(api: Api, *names: str, **kind: bool) -> list[str]:
    return [api.app.state.api.keys.add(name, **kind)[1] for name in names]


def _publish(api: Api, key: str, idempotency_key: str | None = None) -> str:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    r = api.post(
        "/v1/events", json={"event": "order.shipped", "context": {}}, headers=headers, key=key
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _fan_out(worker: Assembly) -> list[Envelope]:
    """What a worker does with the fan-out tasks waiting in the broker: the deliveries
    they made, as the delivery tasks carry them."""
    notifier = Notifier(worker.log)
    for task in drain():
        assert task["task"] == "delivery.fanout"
        notifier.fan_out(Event.model_validate(task["args"][0]), get_publisher())
    envelopes: list[Envelope] = []
    for task in drain():
        body: Any = task["args"][0]
        envelopes += [
            Envelope.model_validate(e) for e in (body if isinstance(body, list) else [body])
        ]
    return envelopes


def _subscribe(worker: Assembly, httpserver: HTTPServer) -> None:
    Notifier(worker.log).subscriptions.add("order.shipped", "hooks", httpserver.url_for("/h"))


def test_two_keys_with_the_same_idempotency_key_make_two_events(
    api: Api, worker: Assembly, httpserver: HTTPServer
) -> None:
    _subscribe(worker, httpserver)
    billing, shop = _keys(api, "billing", "shop")
    first = _publish(api, billing, "order-42")
    again = _publish(api, billing, "order-42")
    other = _publish(api, shop, "order-42")
    assert first == again != other
    assert is_owned(first, "billing") and is_owned(other, "shop")
    assert first == owned_event_id("billing", "order.shipped", "order-42")
    # Python's ids are unchanged, and none of these
    assert event_id("order.shipped", "order-42") not in (first, other)
    # Each event makes its own delivery, owned by its key; billing's second is a replay
    # of its first, and makes nothing more.
    envelopes = _fan_out(worker)
    assert sorted((e.owner, e.test) for e in envelopes) == [("billing", False), ("shop", False)]
    assert len({e.id for e in envelopes}) == 2


def test_a_key_reads_its_events_and_their_deliveries_and_not_anothers(
    api: Api, worker: Assembly, httpserver: HTTPServer
) -> None:
    _subscribe(worker, httpserver)
    httpserver.expect_request("/h", method="POST").respond_with_data("ok")
    billing, shop = _keys(api, "billing", "shop")
    mine = _publish(api, billing)
    [envelope] = _fan_out(worker)
    assert worker.service.deliver(envelope).outcome == "delivered"
    assert len(httpserver.log) == 1  # a real key's delivery calls the provider
    # Its key reads the event, the delivery it made and finds it in its listing
    event = api.get(f"/v1/events/{mine}", key=billing)
    assert event.status_code == 200, event.text
    doc = event.json()
    assert (doc["owner"], doc["test"]) == ("billing", False)
    [made] = doc["deliveries"]
    assert (made["delivery_id"], made["status"]) == (envelope.id, "delivered")
    delivery = api.get(f"/v1/deliveries/{envelope.id}", key=billing).json()
    assert (delivery["owner"], delivery["test"]) == ("billing", False)
    listed = api.get("/v1/deliveries", key=billing).json()["deliveries"]
    assert [d["id"] for d in listed] == [envelope.id]
    # Another key gets 404 for both and an empty listing; an admin key reads them all
    assert api.get(f"/v1/events/{mine}", key=shop).status_code == 404
    assert api.get(f"/v1/deliveries/{envelope.id}", key=shop).status_code == 404
    assert api.get("/v1/deliveries", key=shop).json()["deliveries"] == []
    assert api.get(f"/v1/events/{mine}").json()["owner"] == "billing"  # the admin key
    # An event id nobody published, even one shaped like billing's own, is 404
    unpublished = owned_event_id("billing", "order.shipped", "never-sent")
    assert api.get(f"/v1/events/{unpublished}", key=billing).status_code == 404


def test_a_test_keys_event_ends_delivered_with_no_provider_call(
    api: Api, worker: Assembly, httpserver: HTTPServer
) -> None:
    _subscribe(worker, httpserver)
    [ci] = _keys(api, "ci", test=True)
    # No longer refused: the deliveries it makes are tests
    mine = _publish(api, ci, "build-7")
    [envelope] = _fan_out(worker)
    assert (envelope.owner, envelope.test) == ("ci", True)
    # The worker takes it through every gate and records it delivered; nothing is sent
    assert worker.service.deliver(envelope).outcome == "delivered"
    assert httpserver.log == []
    doc = api.get(f"/v1/events/{mine}", key=ci).json()
    assert doc["test"] is True and doc["deliveries"][0]["status"] == "delivered"
    delivery = api.get(f"/v1/deliveries/{envelope.id}", key=ci).json()
    assert (delivery["status"], delivery["owner"], delivery["test"]) == ("delivered", "ci", True)


def test_the_openapi_document_says_what_events_answer(api: Api) -> None:
    paths = api.get("/openapi.json", key=None).json()["paths"]
    assert "403" not in paths["/v1/events"]["post"]["responses"]
    read = paths["/v1/events/{event_id}"]["get"]["responses"]["404"]["description"]
    assert "another key" in read


@given(
    owners=st.lists(
        st.from_regex(r"\A[a-z][a-z0-9_.-]{0,20}\Z"), min_size=2, max_size=2, unique=True
    ),
    name=st.from_regex(r"\A[a-z][a-z0-9_-]{0,10}(\.[a-z][a-z0-9_-]{0,10}){0,2}\Z"),
    key=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    channel=st.from_regex(CHANNEL_NAME_PATTERN.replace("^", r"\A").replace("$", r"\Z")),
)
def test_event_ids_are_per_key_stable_and_never_a_deliverys(
    owners: list[str], name: str, key: str, channel: str
) -> None:
    one, two = owners
    mine = owned_event_id(one, name, key)
    assert mine == owned_event_id(one, name, key) != owned_event_id(two, name, key)
    assert is_owned(mine, one) and not is_owned(mine, two)
    assert mine != owned_id(one, channel, key)


def test_an_event_nobody_published_is_404_for_every_key(api: Api) -> None:
    [team] = _keys(api, "team")

    @settings(max_examples=25, deadline=None)
    @given(unknown=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z"))
    def check(unknown: str) -> None:
        assert api.get(f"/v1/events/{unknown}", key=team).status_code == 404
        assert api.get(f"/v1/events/{unknown}").status_code == 404  # the admin key too

    check()
