"""``POST /v1/events`` and ``GET /v1/events/{id}`` on a real uvicorn."""

from delivery.api.ownership import owned_event_id
from delivery.engine.assembly import assemble
from delivery.notifications import Notifier
from delivery.producer.events import event_id
from delivery.producer.publisher import get_publisher
from schemas import Settings
from schemas.events import Event
from tests.api.conftest import Api, drain


def test_an_event_is_published_as_one_fanout_task(api: Api) -> None:
    body = {"event": "order.shipped", "context": {"order": 42}, "idempotency_key": "o-42"}
    answer = api.post("/v1/events", json=body)
    assert answer.status_code == 202, answer.text
    # the key's own id (the fixture's key is called "tests"), not Python's
    expected = owned_event_id("tests", "order.shipped", "o-42")
    assert answer.json() == {"id": expected, "event": "order.shipped"}
    assert expected != event_id("order.shipped", "o-42")
    [task] = drain()
    assert task["task"] == "delivery.fanout"
    assert task["args"][0]["context"] == {"order": 42}
    assert (task["args"][0]["owner"], task["args"][0]["test"]) == ("tests", False)
    # the header works as the key; a different one in the body is refused
    again = api.post(
        "/v1/events", json={"event": "order.shipped"}, headers={"Idempotency-Key": "o-42"}
    )
    assert again.json()["id"] == answer.json()["id"]
    clash = api.post("/v1/events", json=body, headers={"Idempotency-Key": "other"})
    assert clash.status_code == 422 and "differs" in clash.json()["detail"]
    paths = api.get("/openapi.json", key=None).json()["paths"]
    assert "/v1/events" in paths and "/v1/events/{event_id}" in paths


def test_bad_events_are_422_naming_the_field_and_nothing_is_enqueued(api: Api) -> None:
    for body, field in [
        ({"event": "Order Shipped"}, "name"),
        ({"event": "a.b", "context": [1]}, "context"),
        ({"event": "a.b", "context": {"x": "a\u0000b"}}, "context"),
        ({"event": "a.b", "extra": 1}, "extra"),
        ({"context": {}}, "event"),
    ]:
        answer = api.post("/v1/events", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert field in answer.text
    nan = api.post(
        "/v1/events",
        data='{"event": "a.b", "context": {"x": NaN}}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422
    assert drain() == []


def test_a_key_is_required(api: Api) -> None:
    assert api.post("/v1/events", json={"event": "a.b"}, key=None).status_code == 401
    assert api.get("/v1/events/x", key="wrong").status_code == 401
    assert drain() == []


def test_an_event_is_read_back_with_its_deliveries(api: Api, settings: Settings) -> None:
    assert api.get("/v1/events/nope").status_code == 404
    engine = assemble(settings)
    engine.channels.add("dev", "console", {})
    notifier = Notifier(engine.log)
    notifier.subscriptions.add("a.b", "dev", "{{ who }}")
    event = Event(id=event_id("a.b", "k"), name="a.b", context={"who": "ann"})
    notifier.fan_out(event, get_publisher())
    doc = api.get(f"/v1/events/{event.id}").json()
    assert doc["id"] == event.id and doc["event"] == "a.b"
    assert [(d["address"], d["outcome"]) for d in doc["deliveries"]] == [("ann", "queued")]
