"""``/v1/deliveries``: what is enqueued, what is read back, and every refusal."""

import pytest

from delivery.api.ownership import owned_id
from delivery.log.tables import Status
from delivery.producer.publisher import delivery_id
from schemas import Envelope, Payload
from tests.api.conftest import Api, drain, enqueued_ids, message


def test_a_message_is_enqueued_as_send_would(api: Api) -> None:
    # When a service posts a message with an Idempotency-Key header
    r = api.post("/v1/deliveries", json=message(), headers={"Idempotency-Key": "order-7"})
    # Then it is accepted with an id of the key's own (per key: two teams' order-7 are two
    # deliveries; never the id send() derives), and one task carries it, marked the key's
    assert r.status_code == 202
    assert r.json() == {"id": owned_id("tests", "hooks", "order-7")}
    assert r.json()["id"] != delivery_id("hooks", "order-7")
    [task] = drain()
    assert task["task"] == "delivery.deliver"
    envelope = Envelope.model_validate(task["args"][0])
    assert envelope.idempotency_key == "order-7"
    assert envelope.payload == Payload(message="hello 0", data={"i": 0})
    assert envelope.owner == "tests" and not envelope.test


def test_the_header_and_the_field_must_agree(api: Api) -> None:
    r = api.post(
        "/v1/deliveries",
        json=message(idempotency_key="a"),
        headers={"Idempotency-Key": "b"},
    )
    assert r.status_code == 422
    assert "idempotency_key" in r.json()["detail"]
    assert drain() == []


def test_a_batch_is_one_publish_with_ids_in_order(api: Api) -> None:
    docs = [message(i, idempotency_key=f"k{i}") for i in range(60)]
    r = api.post("/v1/deliveries/batch", json={"messages": docs})
    assert r.status_code == 202
    ids = r.json()["ids"]
    assert ids == [owned_id("tests", "hooks", f"k{i}") for i in range(60)]
    # batched as send_many batches them: fewer task messages than deliveries
    tasks = drain()
    assert sorted(enqueued_ids(tasks)) == sorted(ids)
    assert len(tasks) < 60


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"address": "x", "payload": {"message": "m"}}, "channel: required"),
        (message(channel="no spaces"), "channel:"),
        (message(payload={"message": "nul \x00"}), "payload.message: contains a NUL"),
        (message(payload={"message": "m", "data": {"x": float("nan")}}), "payload.data: nan"),
        (message(countdown=-1), "countdown:"),
        (message(payload={"message": "m", "colour": "red"}), "unknown field 'payload.colour'"),
        (message(payload={"message": "x" * 300_000}), "payload: "),
        ([1, 2], "body:"),
    ],
)
def test_invalid_input_is_422_naming_the_field_and_nothing_is_enqueued(
    api: Api, doc: object, field: str
) -> None:
    import json

    # NaN is sent as JSON's non-standard token, as a careless client would
    r = api.post(
        "/v1/deliveries",
        data=json.dumps(doc),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    body = r.json()
    assert any(line.startswith(field) for line in body["errors"]), body
    assert drain() == []


def test_one_bad_message_in_a_batch_enqueues_none(api: Api) -> None:
    docs = [message(i) for i in range(5)]
    docs[3]["address"] = ""
    r = api.post("/v1/deliveries/batch", json={"messages": docs})
    assert r.status_code == 422
    assert r.json()["errors"][0].startswith("messages.3.address:")
    assert drain() == []


def test_oversized_bodies_are_413(api: Api) -> None:
    big = b'{"channel": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = api.post("/v1/deliveries", data=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # and when the length is not declared up front (chunked), while it streams in
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    r = api.post("/v1/deliveries", data=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert drain() == []


def test_status_and_log_read_back_what_the_cli_shows(api: Api) -> None:
    # Given deliveries the workers have recorded
    log = api.app.state.api.log
    ids = []
    for i in range(5):
        envelope = Envelope(
            id=f"d-{i}", channel="hooks", address="https://x.example/", payload=Payload(message="m")
        )
        log.claim(envelope, lease=30)
        ids.append(envelope.id)
    # When a service asks for one, it gets `delivery status ID --json`'s document
    r = api.get("/v1/deliveries/d-1")
    assert r.status_code == 200
    record = log.get("d-1")
    assert record is not None
    assert r.json() == record.to_json()
    assert r.json()["status"] == Status.SENDING
    # and the listing is `delivery log --json`'s, a page at a time, each id once
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/deliveries", params=params).json()
        seen += [d["id"] for d in page["deliveries"]]
        assert all("payload" not in d for d in page["deliveries"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # a delivery arriving while paging does not shift the pages
        log.claim(
            Envelope(
                id=f"new-{len(seen)}", channel="hooks", address="a", payload=Payload(message="m")
            ),
            lease=30,
        )
    assert sorted(seen) == sorted(ids)
    assert api.get("/v1/deliveries", params={"status": "sending", "limit": 1000}).json()[
        "deliveries"
    ]
    assert api.get("/v1/deliveries/unknown").status_code == 404


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "lost"}, "query.status:"),
        ({"limit": 0}, "query.limit:"),
        ({"channel": "a b"}, "query.channel:"),
        ({"cursor": "not-a-cursor"}, "query.cursor:"),
    ],
)
def test_bad_listing_parameters_are_422(api: Api, params: dict[str, object], field: str) -> None:
    r = api.get("/v1/deliveries", params=params)
    assert r.status_code == 422
    assert r.json()["errors"][0].startswith(field)


def test_retry_reopens_a_failed_delivery_and_enqueues_it(api: Api) -> None:
    log = api.app.state.api.log
    envelope = Envelope(id="f-1", channel="hooks", address="a", payload=Payload(message="m"))
    log.claim(envelope, lease=30)
    assert api.post("/v1/deliveries/f-1/retry").status_code == 409  # sending, not failed
    log.reject("f-1", channel="hooks", address="a", reason="gave up")
    r = api.post("/v1/deliveries/f-1/retry")
    assert r.status_code == 202
    assert enqueued_ids(drain()) == ["f-1"]
    assert api.post("/v1/deliveries/nobody/retry").status_code == 404


def test_cancel_before_the_worker_sees_it_and_after_it_was_sent(api: Api) -> None:
    log = api.app.state.api.log
    # A message still in the broker: cancelled, and the worker's claim finds it done
    r = api.post("/v1/deliveries/in-broker/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    envelope = Envelope(id="in-broker", channel="hooks", address="a", payload=Payload(message="m"))
    assert log.claim(envelope, lease=30).state.value == "done"
    # Cancelling again is fine
    assert api.post("/v1/deliveries/in-broker/cancel").status_code == 200
    # One being sent under a live lease: too late
    sending = Envelope(id="busy", channel="hooks", address="a", payload=Payload(message="m"))
    log.claim(sending, lease=30)
    r = api.post("/v1/deliveries/busy/cancel")
    assert r.status_code == 409
    assert "being sent now" in r.json()["detail"]
    # An id of no shape a delivery has
    assert api.post("/v1/deliveries/%00x/cancel").status_code == 422
