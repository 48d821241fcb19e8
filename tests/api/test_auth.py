"""Every /v1/ route needs a key: 401 before any routing, whatever was asked."""

import logging

import pytest

from tests.api.conftest import Api, drain, message

ROUTES = [
    ("POST", "/v1/deliveries"),
    ("POST", "/v1/deliveries/batch"),
    ("GET", "/v1/deliveries"),
    ("GET", "/v1/deliveries/some-id"),
    ("POST", "/v1/deliveries/some-id/retry"),
    ("POST", "/v1/deliveries/some-id/cancel"),
    # an unknown path, a wrong method, a bad id: still 401, not 404, 405 or 422
    ("GET", "/v1/nothing-here"),
    ("DELETE", "/v1/deliveries"),
    ("GET", "/v1/deliveries/%00"),
    ("GET", "/v1"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_no_key_wrong_key_and_revoked_key_are_401(api: Api, method: str, path: str) -> None:
    _, revoked = api.app.state.api.keys.add("old")
    assert api.app.state.api.keys.revoke("old")
    wrong = api.key[:-4] + ("AAAA" if not api.key.endswith("AAAA") else "BBBB")
    for key in (None, "not-a-key", wrong, revoked):
        r = api.request(method, path, key=key, json=message())
        assert r.status_code == 401, (key, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert drain() == []


def test_other_schemes_are_401(api: Api) -> None:
    r = api.get("/v1/deliveries", key=None, headers={"Authorization": f"Basic {api.key}"})
    assert r.status_code == 401


def test_health_and_metrics_need_no_key(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert api.get(path, key=None).status_code == 200, path


def test_revoking_takes_effect_and_the_key_is_never_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, key = api.app.state.api.keys.add("billing")
    assert api.get("/v1/deliveries", key=key).status_code == 200
    assert api.app.state.api.keys.revoke("billing")
    assert api.get("/v1/deliveries", key=key).status_code == 401
    assert not api.app.state.api.keys.revoke("billing")  # already
    secret = key.split("_", 2)[2]
    assert secret not in caplog.text
    assert api.key.split("_", 2)[2] not in caplog.text


def test_the_openapi_document_comes_from_the_models(api: Api) -> None:
    doc = api.get("/openapi.json", key=None).json()
    assert {"MessageRequest", "Payload", "BatchRequest", "DeliveryDocument"} <= set(
        doc["components"]["schemas"]
    )
    post = doc["paths"]["/v1/deliveries"]["post"]
    assert post["security"] == [{"apiKey": []}]
    assert {"202", "401", "422", "503"} <= set(post["responses"])
