"""``PUT`` and ``GET /v1/preferences/{address}`` on a real uvicorn."""

from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delivery.recipients import Preferences
from tests.api.conftest import Api

DOC = {
    "timezone": "Europe/London",
    "quiet": "22:00-07:00",
    "rules": [
        {"channel": None, "category": "marketing", "enabled": False},
        {"channel": "sms", "category": None, "enabled": False},
    ],
}


def test_put_then_get_and_the_worker_sees_them(api: Api) -> None:
    # When a service stores a recipient's choices under one spelling of the address
    put = api.request("PUT", "/v1/preferences/Ann@Example.com", json=DOC)
    assert put.status_code == 200, put.text
    assert put.json() == {"address": "ann@example.com", **DOC}
    # Then another spelling reads them back, and the worker's look-up finds them
    got = api.get("/v1/preferences/ANN@example.COM")
    assert got.status_code == 200 and got.json() == put.json()
    found = Preferences(api.app.state.api.log.engine).lookup(["ann@example.com"])
    ann = found["ann@example.com"]
    assert ann.refuses(channel="email", category="marketing")
    assert ann.refuses(channel="sms", category=None)
    assert ann.refuses(channel="email", category="receipts") is None


def test_put_replaces_the_whole_document(api: Api) -> None:
    api.request("PUT", "/v1/preferences/ann@example.com", json=DOC)
    answer = api.request("PUT", "/v1/preferences/ann@example.com", json={"quiet": "01:00-05:00"})
    assert answer.json() == {
        "address": "ann@example.com",
        "timezone": None,
        "quiet": "01:00-05:00",
        "rules": [],
    }


def test_an_address_without_preferences_has_everything_on(api: Api) -> None:
    answer = api.get("/v1/preferences/" + quote("+44 7700 900123"))
    assert answer.status_code == 200
    assert answer.json() == {
        "address": "+44 7700 900123",
        "timezone": None,
        "quiet": None,
        "rules": [],
    }


def test_a_webhook_url_is_an_address_too(api: Api) -> None:
    address = "https://example.com/hooks/a?b=c"
    answer = api.request("PUT", "/v1/preferences/" + quote(address, safe=""), json=DOC)
    assert answer.status_code == 200, answer.text
    assert answer.json()["address"] == address


def test_a_key_is_required(api: Api) -> None:
    assert api.get("/v1/preferences/ann@example.com", key=None).status_code == 401
    assert api.request("PUT", "/v1/preferences/a@b.c", key="wrong", json=DOC).status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"timezone": "Europe/London\u0000"}, "timezone"),
        ({"timezone": "x" * 100}, "timezone"),
        ({"quiet": "22:00"}, "quiet"),
        ({"quiet": "10pm-7am"}, "quiet"),
        ({"quiet": "22:00-22:00"}, "quiet"),
        ({"quiet": "22:00-07:00\u0000"}, "quiet"),
        ({"rules": [{"category": "Marketing", "enabled": False}]}, "rules.0.category"),
        ({"rules": [{"channel": "no spaces", "enabled": False}]}, "rules.0.channel"),
        ({"rules": [{"category": "marketing"}]}, "rules.0.enabled"),
        ({"rules": [{"category": "a", "enabled": False}] * 2}, "same channel"),
        ({"rules": [{"category": f"c{i}", "enabled": False} for i in range(101)]}, "rules"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_nothing_changes(
    api: Api, body: dict[str, Any], field: str
) -> None:
    answer = api.request("PUT", "/v1/preferences/ann@example.com", json=body)
    assert answer.status_code == 422, answer.text
    assert field in answer.text
    assert api.get("/v1/preferences/ann@example.com").json()["rules"] == []


@pytest.mark.parametrize("address", ["%00", "a%00b", "x" * 600, "%20%20"])
def test_a_bad_address_is_422(api: Api, address: str) -> None:
    assert api.get(f"/v1/preferences/{address}").status_code == 422
    assert api.request("PUT", f"/v1/preferences/{address}", json=DOC).status_code == 422


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    timezone=st.one_of(st.none(), st.text(max_size=70)),
    quiet=st.one_of(st.none(), st.text(max_size=20)),
    address=st.text(min_size=1, max_size=40),
)
def test_any_input_is_stored_or_refused_never_a_500(
    api: Api, timezone: str | None, quiet: str | None, address: str
) -> None:
    path = "/v1/preferences/" + quote(address, safe="")
    answer = api.request("PUT", path, json={"timezone": timezone, "quiet": quiet})
    assert answer.status_code in (200, 404, 422), answer.text
    if answer.status_code == 200:
        assert api.get(path).json() == answer.json()
