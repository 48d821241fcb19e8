"""Property-based: whatever a client posts, the answer is never a 5xx.

Valid messages spoiled one field at a time with what clients really send by mistake:
NUL characters, lone surrogates, NaN and Infinity, numbers beyond any float, wrong types,
huge strings and deep nesting; and query strings and ids of any shape.
"""

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import Api, drain, message

NASTY_TEXT = st.one_of(
    st.text(max_size=50),
    st.just("nul \x00 inside"),
    st.just("\ud800 lone surrogate"),
    st.just("x" * 300_000),
    st.just(""),
    st.just("   "),
)
NASTY_NUMBER = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(10**400),
)
NASTY = st.recursive(
    st.one_of(NASTY_TEXT, NASTY_NUMBER, st.booleans(), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    ("channel",),
    ("address",),
    ("idempotency_key",),
    ("countdown",),
    ("payload",),
    ("payload", "message"),
    ("payload", "subject"),
    ("payload", "html_message"),
    ("payload", "data"),
    ("payload", "data", "x"),
    ("unexpected",),
]


def _spoil(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    target = doc
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target.get(key), dict) else target
    target[path[-1]] = value
    return doc


def _encode(doc: Any) -> bytes:
    # As a careless client would: NaN tokens, and lone surrogates as \ud800 escapes.
    return json.dumps(doc, allow_nan=True).encode()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.sampled_from(FIELDS), value=NASTY, batch=st.booleans())
def test_spoiled_messages_never_get_a_5xx(api: Api, path, value, batch: bool) -> None:
    doc = _spoil(message(), path, value)
    body = {"messages": [message(1), doc]} if batch else doc
    route = "/v1/deliveries/batch" if batch else "/v1/deliveries"
    r = api.post(route, data=_encode(body), headers={"Content-Type": "application/json"})
    assert r.status_code < 500, r.text
    assert r.status_code in (202, 413, 422), r.text
    if r.status_code != 202:
        assert drain() == []
    else:
        drain()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=st.one_of(st.binary(max_size=200), st.just(b"\xff\xfe"), st.just(b"{" * 5000)),
    query=st.dictionaries(
        st.sampled_from(["status", "channel", "limit", "cursor"]),
        st.text(max_size=30),
        max_size=4,
    ),
    ident=st.text(min_size=1, max_size=80),
)
def test_any_bytes_query_or_id_never_gets_a_5xx(api: Api, raw: bytes, query, ident: str) -> None:
    from urllib.parse import quote

    answers = [
        api.post("/v1/deliveries", data=raw, headers={"Content-Type": "application/json"}),
        api.get("/v1/deliveries", params=query),
        api.get(f"/v1/deliveries/{quote(ident, safe='')}"),
        api.post(f"/v1/deliveries/{quote(ident, safe='')}/retry"),
    ]
    for r in answers:
        assert r.status_code < 500, (r.request.url, r.text)
    drain()
