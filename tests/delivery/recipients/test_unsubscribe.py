"""Unsubscribe tokens: ours are read back; forged, altered, truncated or borrowed ones are
not; and a link is offered only where one may be."""

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delivery.engine.crypto import generate_key
from delivery.recipients import UnsubscribeTarget, read_token, unsubscribe_url
from delivery.recipients.unsubscribe import unsubscribe_token
from schemas import Settings

KEY = generate_key()


def settings(**changes: object) -> Settings:
    values: dict[str, object] = {
        "secret_key": KEY,
        "public_url": "https://delivery.example.com/",
        "home": "/nonexistent-delivery-home",
        **changes,
    }
    return Settings.model_validate(values)


SETTINGS = settings()


def token_of(url: str | None) -> str:
    assert url is not None
    prefix = "https://delivery.example.com/unsubscribe/"
    assert url.startswith(prefix)
    return url.removeprefix(prefix)


def test_a_link_reads_back_as_what_it_was_made_for() -> None:
    url = unsubscribe_url(
        SETTINGS, address=" Ann@Example.com", channel="email", category="marketing"
    )
    assert read_token(SETTINGS, token_of(url)) == UnsubscribeTarget(
        "ann@example.com", "email", "marketing"
    )
    whole = unsubscribe_url(SETTINGS, address="+447700900123", channel="sms", category=None)
    assert read_token(SETTINGS, token_of(whole)) == UnsubscribeTarget("+447700900123", "sms", None)


def test_no_link_without_a_public_url_a_key_or_for_a_critical_category() -> None:
    args = {"address": "ann@example.com", "channel": "email"}
    assert unsubscribe_url(settings(public_url=None), **args, category="marketing") is None
    assert unsubscribe_url(settings(secret_key=None), **args, category="marketing") is None
    assert unsubscribe_url(SETTINGS, **args, category="security") is None
    assert unsubscribe_url(SETTINGS, address="", channel="email", category="marketing") is None


def test_a_token_says_nothing_of_the_key_and_differs_per_target() -> None:
    a = unsubscribe_token(SETTINGS, address="a@example.com", channel="email", category="news")
    b = unsubscribe_token(SETTINGS, address="b@example.com", channel="email", category="news")
    assert a is not None and b is not None and a != b
    assert KEY not in a and KEY.rstrip("=") not in a


def _good() -> str:
    token = unsubscribe_token(SETTINGS, address="a@example.com", channel="email", category="news")
    assert token is not None
    return token


def _forged_payload(address: str) -> str:
    _, mac = _good().split(".")
    payload = json.dumps([1, address, "email", "news"], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + "." + mac


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(_forged_payload("victim@example.com"), id="another address, same MAC"),
        pytest.param(_good()[:-1], id="truncated MAC"),
        pytest.param(_good().split(".")[0], id="no MAC"),
        pytest.param(_good()[1:], id="truncated payload"),
        pytest.param(_good() + "A", id="extended"),
        pytest.param(_good().replace(".", ".x", 1)[:-1], id="shifted MAC"),
        pytest.param("", id="empty"),
        pytest.param("A" * 5000, id="huge"),
    ],
)
def test_forged_altered_or_truncated_tokens_are_refused(token: str) -> None:
    assert read_token(SETTINGS, token) is None


def test_another_deployment_s_token_is_refused_and_rotation_keeps_old_links() -> None:
    other = settings(secret_key=generate_key())
    assert read_token(other, _good()) is None
    rotated = settings(secret_key=f"{generate_key()},{KEY}")
    assert read_token(rotated, _good()) is not None


@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_change_of_one_character_is_refused(position: int, shift: int) -> None:
    token = _good()
    i = position % len(token)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    changed = alphabet[(alphabet.index(token[i]) + shift) % len(alphabet)]
    if changed == token[i]:
        return
    assert read_token(SETTINGS, token[:i] + changed + token[i + 1 :]) is None


@given(st.text(max_size=300))
def test_any_text_is_refused_quietly(text: str) -> None:
    assert read_token(SETTINGS, text) is None


def test_the_critical_categories_are_the_deployment_s() -> None:
    billing = settings(critical_categories="billing,security")
    args = {"address": "ann@example.com", "channel": "email"}
    assert unsubscribe_url(billing, **args, category="billing") is None
    assert unsubscribe_url(settings(critical_categories=""), **args, category="security")
