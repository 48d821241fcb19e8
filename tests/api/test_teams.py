"""Many teams on one ``delivery serve`` (issue 27): keys own what they send, test keys,
early refusals and a rate limit per key. Through the real app on a real server."""

import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delivery.api import create_app
from delivery.api.ownership import is_owned, owned_id
from delivery.log.tables import Status
from schemas import Envelope, Payload, Settings
from tests.api.conftest import Api, drain, message
from tests.support.uvicorn_server import serving


def _keys(api: Api, *names: str, **kind: bool) -> list[str]:
    return [api.app.state.api.keys.add(name, **kind)[1] for name in names]


def _claimed(api: Api, delivery_id: str, owner: str | None) -> None:
    """What a worker writes when it takes the delivery from the broker."""
    envelope = Envelope(
        id=delivery_id, channel="hooks", address="a", payload=Payload(message="m"), owner=owner
    )
    api.app.state.api.log.claim(envelope, lease=30)


def test_two_teams_idempotency_keys_are_two_deliveries(api: Api) -> None:
    billing, shop = _keys(api, "billing", "shop")
    headers = {"Idempotency-Key": "order-42"}
    first = api.post("/v1/deliveries", json=message(), headers=headers, key=billing).json()["id"]
    again = api.post("/v1/deliveries", json=message(), headers=headers, key=billing).json()["id"]
    other = api.post("/v1/deliveries", json=message(), headers=headers, key=shop).json()["id"]
    assert first == again != other
    assert is_owned(first, "billing") and is_owned(other, "shop")
    assert [t["args"][0]["owner"] for t in drain()] == ["billing", "billing", "shop"]


def test_another_keys_delivery_is_404_and_nothing_is_written(api: Api) -> None:
    billing, shop = _keys(api, "billing", "shop")
    mine = api.post("/v1/deliveries", json=message(), key=billing).json()["id"]
    _claimed(api, mine, "billing")
    log = api.app.state.api.log
    before = log.get(mine)
    for method, path in [
        ("GET", f"/v1/deliveries/{mine}"),
        ("POST", f"/v1/deliveries/{mine}/retry"),
        ("POST", f"/v1/deliveries/{mine}/cancel"),
    ]:
        r = api.request(method, path, key=shop)
        assert r.status_code == 404, (method, path, r.text)
    assert log.get(mine) == before
    # and its owner sees it, as an admin key does
    assert api.get(f"/v1/deliveries/{mine}", key=billing).json()["owner"] == "billing"
    assert api.get(f"/v1/deliveries/{mine}").status_code == 200  # the fixture's admin key


def test_an_id_nobody_sent_is_404_and_nothing_is_written(api: Api) -> None:
    [shop] = _keys(api, "shop")
    log = api.app.state.api.log
    for unknown in [str(uuid.uuid4()), "not-a-uuid", owned_id("billing", "hooks", None)]:
        for action in ("cancel", "retry"):
            r = api.post(f"/v1/deliveries/{unknown}/{action}", key=shop)
            assert r.status_code == 404, (unknown, action, r.text)
        assert api.get(f"/v1/deliveries/{unknown}", key=shop).status_code == 404
        assert log.get(unknown) is None


def test_a_key_cancels_its_own_delivery_before_a_worker_takes_it(api: Api) -> None:
    [billing] = _keys(api, "billing")
    sent = api.post("/v1/deliveries", json=message(countdown=60), key=billing).json()["id"]
    # Its message waits in the broker; the log does not know it yet
    r = api.post(f"/v1/deliveries/{sent}/cancel", key=billing)
    assert r.status_code == 200 and r.json()["status"] == Status.CANCELLED
    record = api.app.state.api.log.get(sent)
    assert record is not None and record.owner == "billing"
    # so the worker that takes the message finds it done
    claim = api.app.state.api.log.claim(Envelope.model_validate(drain()[0]["args"][0]), lease=30)
    assert claim.status == Status.CANCELLED


def test_a_listing_shows_the_keys_own_and_an_admin_key_sees_all(api: Api) -> None:
    billing, shop = _keys(api, "billing", "shop")
    [boss] = _keys(api, "boss", admin=True)
    for i, owner in enumerate(["billing", "shop", None, "billing"]):
        _claimed(api, f"d-{i}", owner)

    def listed(key: str) -> set[str]:
        r = api.get("/v1/deliveries", key=key)
        assert r.status_code == 200
        return {d["id"] for d in r.json()["deliveries"]}

    assert listed(billing) == {"d-0", "d-3"}
    assert listed(shop) == {"d-1"}
    assert listed(boss) == {"d-0", "d-1", "d-2", "d-3"}


def test_a_test_keys_deliveries_are_marked_tests(api: Api) -> None:
    [ci] = _keys(api, "ci", test=True)
    r = api.post("/v1/deliveries/batch", json={"messages": [message(1), message(2)]}, key=ci)
    assert r.status_code == 202
    envelopes = [e for t in drain() for e in _envelopes(t)]
    assert [(e["owner"], e["test"]) for e in envelopes] == [("ci", True), ("ci", True)]
    r = api.post("/v1/deliveries", json=message(), key=_keys(api, "real")[0])
    assert [e["test"] for t in drain() for e in _envelopes(t)] == [False]


def _envelopes(task: dict[str, Any]) -> list[dict[str, Any]]:
    body = task["args"][0]
    return body if isinstance(body, list) else [body]


def test_what_a_worker_would_fail_is_refused_at_once(api: Api) -> None:
    cases = {
        "channel": message(channel="no-such-channel"),
        "address": message(address="not a url"),
        "payload": message(payload={"message": ""}),
    }
    for field, doc in cases.items():
        r = api.post("/v1/deliveries", json=doc)
        assert r.status_code == 422, (field, r.text)
        assert r.json()["errors"][0].startswith(f"{field}: "), r.json()
    assert "no-such-channel" in api.post("/v1/deliveries", json=cases["channel"]).text
    # in a batch, each is named by its place, and nothing is enqueued
    r = api.post("/v1/deliveries/batch", json={"messages": [message(), cases["channel"]]})
    assert r.status_code == 422 and r.json()["errors"][0].startswith("messages.1.channel: ")
    assert drain() == []


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    countdown=st.one_of(
        st.booleans(),
        st.text(max_size=5),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
)
def test_json_types_are_strict(api: Api, countdown: object) -> None:
    # `false` is not a number, nor "5" a countdown: 422 naming the field, nothing enqueued.
    r = api.post("/v1/deliveries", json=message(countdown=countdown))
    assert r.status_code == 422, r.text
    assert any(line.startswith("countdown") for line in r.json()["errors"])
    assert drain() == []


def test_a_key_over_its_rate_gets_429_with_retry_after(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"api_rate_limit": 6}), key_cache_seconds=0)
    # 6 a minute, one every 10 s, and a burst of 10 s worth: 2 at once, then 429
    _, first = app.state.api.keys.add("first")
    _, second = app.state.api.keys.add("second")
    try:
        with serving(app) as url:
            api = Api(url, first, app, __import__("requests").Session())
            codes = [api.get("/v1/deliveries").status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            limited = api.get("/v1/deliveries")
            assert limited.status_code == 429
            assert int(limited.headers["Retry-After"]) >= 1
            assert "a minute" in limited.json()["detail"]
            # per key: another key is not held back; and the routes without a key never are
            assert api.get("/v1/deliveries", key=second).status_code == 200
            assert api.get("/healthz", key=None).status_code == 200
    finally:
        app.state.api.close()
