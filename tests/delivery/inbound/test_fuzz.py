"""Fuzz ``/inbound/NAME`` and ``/receipts/CHANNEL`` on a real uvicorn server: whatever a
caller sends, the answer is a deliberate 2xx/4xx, never a 5xx, and never names a secret."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from delivery.engine.assembly import assemble
from delivery.inbound import receipts, routes
from delivery.inbound.wiring import current_inbound
from schemas import Settings
from tests.conftest import webhook_secret
from tests.support.uvicorn_server import app_with, serving

TOKEN = "fuzz-auth-token-do-not-echo"
HTTP_TOKEN = "fuzz-http-token-do-not-echo"
SECRET = webhook_secret()
SECRETS = (TOKEN, HTTP_TOKEN, SECRET, SECRET.removeprefix("whsec_"))
#: Every status the fuzzing saw, so the next test can check it reached past the checks.
SEEN: set[int] = set()
PATHS = [
    "/inbound/tw",
    "/inbound/gw",
    "/inbound/open",
    "/inbound/hooks",
    "/inbound/nobody",
    "/receipts/sms-out",
    "/receipts/nosuch",
]

# Header values requests will send: latin-1, no whitespace or control characters.
header_text = st.text(
    st.sampled_from([chr(c) for c in (*range(33, 127), *range(161, 256))]), max_size=60
)
param_text = st.text(max_size=40)
named = st.text(min_size=1, max_size=40).filter(str.strip)
params = st.dictionaries(
    st.sampled_from(["From", "Body", "MessageSid", "MessageStatus", "phone", "message", "id"])
    | param_text,
    param_text,
    max_size=6,
) | st.fixed_dictionaries(
    # Plausible requests, with every field the backends want, so examples get past them.
    {"From": named, "Body": param_text, "MessageSid": named, "identity": named, "id": named},
    optional={"text": param_text, "MessageStatus": st.sampled_from(["delivered", "failed"])},
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | param_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(param_text, inner, max_size=3),
    max_leaves=8,
)
headers = st.dictionaries(
    st.sampled_from(
        [
            "X-Twilio-Signature",
            "X-Inbound-Token",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "Content-Type",
        ]
    ),
    header_text,
    max_size=4,
)
bodies = st.one_of(
    params.map(lambda p: ("form", p)),
    json_values.map(lambda v: ("json", v)),
    st.binary(max_size=200).map(lambda b: ("raw", b)),
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # One server for every example; the settings fixture is per test, so build by hand.
    monkeypatch = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("fuzz")
    from delivery.engine.crypto import generate_key
    from delivery.log.migrate import upgrade
    from schemas import get_settings

    for key, value in {
        "DELIVERY_HOME": str(home / ".delivery"),
        "DELIVERY_DATABASE_URL": f"sqlite:///{home / 'log.sqlite3'}",
        "DELIVERY_SECRET_KEY": generate_key(),
        "DELIVERY_BROKER_URL": "memory://",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    current: Settings = get_settings()
    upgrade(current.resolved_database_url)
    engine = assemble(current)
    engine.channels.add(
        "sms-out",
        "sms",
        {"account_sid": "AC" + "0" * 32, "auth_token": TOKEN, "from_number": "+14155550100"},
    )
    inbound = current_inbound()
    inbound.backends.add("tw", "twilio", {"auth_token": TOKEN})
    inbound.backends.add("gw", "http", {"token": HTTP_TOKEN, "identity": "phone"})
    inbound.backends.add("open", "http", {"required": "id", "provider_id": "id"})
    inbound.backends.add("hooks", "standard-webhooks", {"secret": SECRET})
    with serving(app_with(routes.router, receipts.router)) as url:
        yield url
    engine.close()
    monkeypatch.undo()
    get_settings.cache_clear()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # always one that gets all the way in, whatever else is drawn
    path="/inbound/tw",
    method="POST",
    body=("form", {"From": "+1", "Body": "hi", "MessageSid": "SM1"}),
    extra_headers={},
    query={},
    sign=True,
)
@example(
    path="/inbound/open",
    method="GET",
    body=("raw", b""),
    extra_headers={},
    query={"identity": "+1", "text": "hi", "id": "7"},
    sign=False,
)
@given(
    path=st.sampled_from(PATHS),
    method=st.sampled_from(["GET", "POST", "POST", "PUT"]),
    body=bodies,
    extra_headers=headers,
    query=params,
    sign=st.booleans(),
)
def test_no_input_makes_a_5xx_or_shows_a_secret(
    base: str, path, method, body, extra_headers, query, sign
) -> None:
    kind, content = body
    kwargs: dict[str, Any] = {"params": query, "headers": dict(extra_headers), "timeout": 10}
    if kind == "form":
        kwargs["data"] = content
    elif kind == "json":
        kwargs["data"] = json.dumps(content)
        kwargs["headers"].setdefault("Content-Type", "application/json")
    else:
        kwargs["data"] = content
    if sign and kind == "form":
        # A correctly signed Twilio request reaches past the signature check.
        url = requests.Request(method, base + path, params=query).prepare().url
        kwargs["headers"]["X-Twilio-Signature"] = RequestValidator(TOKEN).compute_signature(
            url, content if method != "GET" else {}
        )
    response = requests.request(method, base + path, **kwargs)
    SEEN.add(response.status_code)
    assert response.status_code < 500, response.text
    assert not any(secret in response.text for secret in SECRETS)


def test_the_fuzzing_reached_every_outcome(base: str) -> None:
    # The fuzz run again on its own, so this holds whatever order tests run in: it reached
    # accepted, invalid, unsigned, unknown and wrong-method answers, not only one of them.
    SEEN.clear()
    test_no_input_makes_a_5xx_or_shows_a_secret(base)
    assert {200, 400, 403, 404, 405} <= SEEN, SEEN
