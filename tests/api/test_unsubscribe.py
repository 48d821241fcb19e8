"""``GET`` and ``POST /unsubscribe/{token}`` (RFC 8058 one-click) on a real uvicorn."""

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delivery.recipients import Preferences, unsubscribe_url
from tests.api.conftest import Api

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def link(api: Api, *, address: str = "ann@example.com", category: str | None = "marketing"):
    state = api.app.state.api
    public = state.settings.model_copy(update={"public_url": api.url})
    url = unsubscribe_url(public, address=address, channel="email", category=category)
    assert url is not None and url.startswith(api.url + "/unsubscribe/")
    return url.removeprefix(api.url)


def stored(api: Api, address: str = "ann@example.com"):
    return Preferences(api.app.state.api.log.engine).show(address)


def test_get_asks_and_changes_nothing(api: Api) -> None:
    # A mail scanner following the link, or the recipient opening it
    page = api.get(link(api), key=None)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "marketing" in page.text and 'method="post"' in page.text
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    assert stored(api).rules == ()


def test_one_click_post_turns_the_category_off_at_once(api: Api) -> None:
    # When the mail provider posts RFC 8058's body, without any API key
    answer = api.post(link(api, address="Ann@Example.com"), key=None, data=ONE_CLICK)
    # Then that category is off for that address, and nothing else is
    assert answer.status_code == 200, answer.text
    assert "marketing" in answer.text
    ann = stored(api)
    assert ann.refuses(channel="email", category="marketing")
    assert ann.refuses(channel="sms", category="marketing")
    assert ann.refuses(channel="email", category="receipts") is None
    # Twice is harmless
    assert api.post(link(api), key=None, data=ONE_CLICK).status_code == 200
    assert len(stored(api).rules) == 1


def test_a_link_without_a_category_turns_the_channel_off(api: Api) -> None:
    assert api.post(link(api, category=None), key=None).status_code == 200
    ann = stored(api)
    assert ann.refuses(channel="email", category=None)
    assert ann.refuses(channel="sms", category=None) is None


def test_a_critical_category_gets_no_link(api: Api) -> None:
    public = api.app.state.api.settings.model_copy(update={"public_url": api.url})
    assert unsubscribe_url(public, address="a@b.c", channel="email", category="security") is None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda t: t[:-1], id="truncated"),
        pytest.param(lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1], id="altered"),
        pytest.param(lambda t: "x" + t, id="prefixed"),
        pytest.param(lambda t: "AAAA.BBBB", id="forged"),
    ],
)
def test_a_bad_token_is_404_says_nothing_and_changes_nothing(api: Api, change) -> None:
    path = link(api)
    token = path.removeprefix("/unsubscribe/")
    bad = "/unsubscribe/" + change(token)
    for method in ("GET", "POST"):
        answer = api.request(method, bad, key=None, data=ONE_CLICK)
        assert answer.status_code == 404
        assert "not valid" in answer.text
        assert "MAC" not in answer.text and "base64" not in answer.text
    assert stored(api).rules == ()


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=200))
def test_any_token_is_refused_quietly(api: Api, token: str) -> None:
    from urllib.parse import quote

    answer = api.post("/unsubscribe/" + quote(token, safe=""), key=None)
    assert answer.status_code in (404, 405)
    assert stored(api).rules == ()


def test_the_access_log_never_shows_a_token(api: Api) -> None:
    # uvicorn's access logger writes (client, method, path, version, status) as its args
    path = link(api)
    access = logging.getLogger("uvicorn.access")
    written: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: written.append(record.getMessage())  # type: ignore[method-assign]
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "POST", path, "1.1", 200)
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert written == ['127.0.0.1:1 - "POST /unsubscribe/… HTTP/1.1" 200']
