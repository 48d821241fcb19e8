"""``category`` through the HTTP service: taken by ``POST /v1/deliveries`` and
``POST /v1/events``, refused with a 422 naming the field, shown by
``GET /v1/deliveries/{id}``."""

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import CATEGORY_PATTERN, Envelope, Payload
from tests.api.conftest import Api, drain, message


def test_a_delivery_carries_its_category_to_the_worker(api: Api) -> None:
    r = api.post("/v1/deliveries", json=message(category="billing"))
    assert r.status_code == 202, r.text
    [task] = drain()
    assert Envelope.model_validate(task["args"][0]).category == "billing"


def test_an_event_carries_its_category_to_the_fanout(api: Api) -> None:
    r = api.post("/v1/events", json={"event": "order.shipped", "category": "orders"})
    assert r.status_code == 202, r.text
    [task] = drain()
    assert task["args"][0]["category"] == "orders"


@pytest.mark.parametrize("bad", ["Billing", "x" * 33, "a\u0000", 7, "", "-a", ["a"]])
@pytest.mark.parametrize("path", ["/v1/deliveries", "/v1/events"])
def test_a_bad_category_is_422_naming_the_field(api: Api, path: str, bad: object) -> None:
    body = message(category=bad) if path == "/v1/deliveries" else {"event": "a.b", "category": bad}
    r = api.post(path, data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(line.startswith("category") for line in r.json()["errors"]), r.json()
    assert drain() == []


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.booleans()))
def test_any_category_is_accepted_or_refused_cleanly(api: Api, value: object) -> None:
    r = api.post("/v1/deliveries", json=message(category=value))
    good = value is None or (isinstance(value, str) and re.fullmatch(CATEGORY_PATTERN, value))
    assert r.status_code == (202 if good else 422), r.text
    drain()


def test_get_shows_the_category_the_worker_recorded(api: Api) -> None:
    log = api.app.state.api.log
    envelope = Envelope(
        id="c-1", channel="hooks", address="https://x.example/", payload=Payload(message="m"),
        category="security",
    )  # fmt: skip
    log.claim(envelope, lease=30)
    r = api.get("/v1/deliveries/c-1")
    assert r.status_code == 200 and r.json()["category"] == "security"
    listed = api.get("/v1/deliveries").json()["deliveries"]
    assert [d["category"] for d in listed] == ["security"]
