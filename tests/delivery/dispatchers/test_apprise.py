"""The Apprise dispatcher: a json:// URL pointed at a local HTTP server."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from pytest_httpserver import HTTPServer

from delivery.dispatchers import DispatcherEnvironment
from delivery.dispatchers.apprise import AppriseConfig, AppriseDispatcher
from delivery.dispatchers.base import SendContext
from delivery.errors import (
    DeliveryError,
    ForbiddenTarget,
    InvalidAddress,
    PermanentError,
    RetryableError,
)
from schemas import Payload, Settings
from tests.support.environment import LOCAL
from tests.support.servers import free_port

# apprise imports the standard library's deprecated imghdr (for PGPy) on Python < 3.13.
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")

CONTEXT = SendContext(delivery_id="d-1")

Factory = Callable[..., AppriseDispatcher]


def _factory(environment: DispatcherEnvironment) -> Iterator[Factory]:
    made: list[AppriseDispatcher] = []

    def make(**config: Any) -> AppriseDispatcher:
        made.append(
            AppriseDispatcher(AppriseConfig.model_validate(config), environment=environment)
        )
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.fixture
def dispatcher(settings: Settings) -> Iterator[Factory]:
    yield from _factory(LOCAL)


@pytest.fixture
def guarded(settings: Settings) -> Iterator[Factory]:
    """Production's default environment: private, loopback and link-local targets refused."""
    yield from _factory(DispatcherEnvironment())


def json_url(httpserver: HTTPServer, path: str = "/notify") -> str:
    return f"json://127.0.0.1:{httpserver.port}{path}"


def test_sends_title_and_body(httpserver: HTTPServer, dispatcher: Factory) -> None:
    httpserver.expect_oneshot_request("/notify", method="POST").respond_with_data("ok")
    result = dispatcher().send(
        json_url(httpserver), Payload(message="Disk is full", subject="Disk"), context=CONTEXT
    )
    [(request, _)] = httpserver.log
    body = request.get_json()
    assert (body["title"], body["message"]) == ("Disk", "Disk is full")
    assert result.detail == {"service": f"json://127.0.0.1:{httpserver.port}"}


def test_html_only_is_sent_as_text(httpserver: HTTPServer, dispatcher: Factory) -> None:
    httpserver.expect_oneshot_request("/notify").respond_with_data("ok")
    dispatcher().send(
        json_url(httpserver),
        Payload(message="", html_message="<p>Hi <b>there</b></p>"),
        context=CONTEXT,
    )
    [(request, _)] = httpserver.log
    assert request.get_json()["message"] == "Hi **there**"


def test_dash_means_the_channels_url(httpserver: HTTPServer, dispatcher: Factory) -> None:
    httpserver.expect_oneshot_request("/configured").respond_with_data("ok")
    channel = dispatcher(url=json_url(httpserver, "/configured"))
    channel.send("-", Payload(message="hi"), context=CONTEXT)
    assert len(httpserver.log) == 1


def test_dash_without_a_configured_url_is_invalid(dispatcher: Factory) -> None:
    with pytest.raises(InvalidAddress, match="no url"):
        dispatcher().send("-", Payload(message="hi"), context=CONTEXT)


@pytest.mark.parametrize(("status", "kind"), [(503, RetryableError), (429, RetryableError)])
def test_server_trouble_is_retryable(
    httpserver: HTTPServer, dispatcher: Factory, status: int, kind: type[DeliveryError]
) -> None:
    httpserver.expect_oneshot_request("/notify").respond_with_data("", status=status)
    with pytest.raises(kind, match=f"error={status}") as caught:
        dispatcher().send(json_url(httpserver), Payload(message="hi"), context=CONTEXT)
    assert caught.value.status == status


def test_a_4xx_in_apprises_log_is_permanent(httpserver: HTTPServer, dispatcher: Factory) -> None:
    httpserver.expect_oneshot_request("/notify").respond_with_data("", status=400)
    with pytest.raises(PermanentError) as caught:
        dispatcher().send(json_url(httpserver), Payload(message="hi"), context=CONTEXT)
    assert caught.value.status == 400


def test_connection_refused_is_retryable_and_keeps_secrets_out(dispatcher: Factory) -> None:
    secret_url = f"json://user:hunter2hunter2@127.0.0.1:{free_port()}/hook?token=abcdef123456"
    with pytest.raises(RetryableError) as caught:
        dispatcher(url=secret_url).send("-", Payload(message="hi"), context=CONTEXT)
    assert caught.value.status is None
    message = str(caught.value)
    assert "hunter2hunter2" not in message
    assert "abcdef123456" not in message


def test_url_apprise_cannot_use_is_invalid(dispatcher: Factory) -> None:
    with pytest.raises(InvalidAddress, match="cannot use"):
        dispatcher().send("nosuchservice://token", Payload(message="hi"), context=CONTEXT)


@pytest.mark.parametrize("address", ["http//nope", "just words", "#ops"])
def test_addresses_must_be_urls(dispatcher: Factory, address: str) -> None:
    with pytest.raises(InvalidAddress):
        dispatcher().validate_address(address)


def test_private_targets_are_refused_before_sending(
    httpserver: HTTPServer, guarded: Factory
) -> None:
    with pytest.raises(ForbiddenTarget, match=r"127\.0\.0\.1"):
        guarded().send(json_url(httpserver), Payload(message="hi"), context=CONTEXT)
    assert httpserver.log == []


def test_redirects_are_refused_when_guarded(guarded: Factory) -> None:
    # ntfy's host is not checked (ntfy://topic means ntfy.sh), so no DNS is needed here.
    with pytest.raises(ForbiddenTarget, match="redirects"):
        guarded().send("ntfy://mytopic?redirect=yes", Payload(message="hi"), context=CONTEXT)


def test_config_url_must_look_like_a_url() -> None:
    with pytest.raises(ValidationError):
        AppriseConfig.model_validate({"url": "not a url"})
    assert AppriseConfig.secret_fields() == {"url"}
