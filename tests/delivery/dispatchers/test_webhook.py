import ipaddress
import json
import threading

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook
from werkzeug import Request, Response

from delivery.dispatchers.base import SendContext
from delivery.dispatchers.netguard import GuardedPoolManager, is_forbidden, resolve_public
from delivery.dispatchers.webhook import WebhookConfig, WebhookDispatcher
from delivery.errors import (
    ForbiddenTarget,
    InvalidAddress,
    PermanentError,
    RateLimited,
    RetryableError,
)
from schemas import Payload, Settings
from tests.conftest import webhook_secret
from tests.support.environment import LOCAL

CONTEXT = SendContext(
    delivery_id="7b0c5a2e-1111-4222-8333-444455556666", attempt=1, channel="hooks"
)


@pytest.fixture
def secret() -> str:
    return webhook_secret()


@pytest.fixture
def dispatcher(settings: Settings, secret: str) -> WebhookDispatcher:
    return WebhookDispatcher(
        WebhookConfig(secret=secret, timeout=1, headers={"x-tenant": "acme"}), environment=LOCAL
    )


def test_request_is_signed_per_standard_webhooks(
    httpserver: HTTPServer, dispatcher: WebhookDispatcher, secret: str
) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("", status=204)
    payload = Payload(message="Order shipped", subject="Shipping", data={"order": 42})
    result = dispatcher.send(httpserver.url_for("/hook"), payload, context=CONTEXT)
    assert result.status == 204
    [(request, _)] = httpserver.log
    headers = dict(request.headers)
    # Any Standard Webhooks library verifies it; the id is the delivery id
    Webhook(secret).verify(request.get_data(), {k.lower(): v for k, v in headers.items()})
    assert request.headers["webhook-id"] == CONTEXT.delivery_id
    assert request.headers["x-tenant"] == "acme"
    assert json.loads(request.get_data()) == payload.model_dump(mode="json")


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503])
def test_retryable_statuses(
    httpserver: HTTPServer, dispatcher: WebhookDispatcher, status: int
) -> None:
    httpserver.expect_request("/hook").respond_with_data("", status=status)
    with pytest.raises(RetryableError) as caught:
        dispatcher.send(httpserver.url_for("/hook"), Payload(message="m"), context=CONTEXT)
    assert caught.value.status == status


def test_429_carries_retry_after(httpserver: HTTPServer, dispatcher: WebhookDispatcher) -> None:
    httpserver.expect_request("/hook").respond_with_data(
        "", status=429, headers={"Retry-After": "7"}
    )
    with pytest.raises(RateLimited) as caught:
        dispatcher.send(httpserver.url_for("/hook"), Payload(message="m"), context=CONTEXT)
    assert caught.value.retry_after == 7


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_4xx_are_permanent(
    httpserver: HTTPServer, dispatcher: WebhookDispatcher, status: int
) -> None:
    httpserver.expect_request("/hook").respond_with_data("", status=status)
    with pytest.raises(PermanentError) as caught:
        dispatcher.send(httpserver.url_for("/hook"), Payload(message="m"), context=CONTEXT)
    assert caught.value.status == status


def test_timeouts_and_refused_connections_are_retryable(
    httpserver: HTTPServer, dispatcher: WebhookDispatcher
) -> None:
    release = threading.Event()

    def slow(_: Request) -> Response:
        release.wait(30)
        return Response("", status=204)

    httpserver.expect_request("/slow").respond_with_handler(slow)
    # The configured 1 s timeout, not the server's pace (30 s): had the dispatcher waited
    # for the server, it would have had its 204 and raised nothing.
    with pytest.raises(RetryableError, match="timed out"):
        dispatcher.send(httpserver.url_for("/slow"), Payload(message="m"), context=CONTEXT)
    release.set()
    with pytest.raises(RetryableError, match="cannot reach"):
        dispatcher.send("http://127.0.0.1:1/hook", Payload(message="m"), context=CONTEXT)


def test_redirects_are_followed_but_not_forever(
    httpserver: HTTPServer, dispatcher: WebhookDispatcher
) -> None:
    httpserver.expect_request("/old").respond_with_data(
        "", status=308, headers={"Location": "/new"}
    )
    httpserver.expect_request("/new", method="POST").respond_with_data("", status=200)
    assert (
        dispatcher.send(httpserver.url_for("/old"), Payload(message="m"), context=CONTEXT).status
        == 200
    )
    httpserver.expect_request("/loop").respond_with_data(
        "", status=307, headers={"Location": "/loop"}
    )
    with pytest.raises(PermanentError, match="TooManyRedirects"):
        dispatcher.send(httpserver.url_for("/loop"), Payload(message="m"), context=CONTEXT)


@pytest.mark.parametrize(
    "address", ["ftp://example.com/x", "not a url", "https://user:pw@example.com/h"]
)
def test_bad_addresses_are_refused(dispatcher: WebhookDispatcher, address: str) -> None:
    with pytest.raises(InvalidAddress):
        dispatcher.send(address, Payload(message="m"), context=CONTEXT)


def test_each_thread_keeps_its_connections_alive(
    httpserver: HTTPServer, dispatcher: WebhookDispatcher
) -> None:
    httpserver.expect_request("/h").respond_with_data("", status=204)
    url = httpserver.url_for("/h")

    def send_three() -> GuardedPoolManager:
        for _ in range(3):
            dispatcher.send(url, Payload(message="m"), context=CONTEXT)
        return dispatcher.get_local("http", GuardedPoolManager)

    mine = send_three()
    theirs: list[GuardedPoolManager] = []
    thread = threading.Thread(target=lambda: theirs.append(send_three()))
    thread.start()
    thread.join()
    # one pool per thread, and three requests over one connection in each
    assert theirs[0] is not mine
    for manager in (mine, theirs[0]):
        assert manager.connection_from_url(url).num_connections == 1
    dispatcher.close()
    assert len(mine.pools) == 0  # closing the dispatcher closed every thread's pool


class TestSSRF:
    @pytest.fixture
    def guarded(self, secret: str) -> WebhookDispatcher:
        # Production's default environment: private networks refused.
        return WebhookDispatcher(WebhookConfig(secret=secret))

    @pytest.mark.parametrize(
        "ip",
        [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ],
    )
    def test_non_public_addresses_are_forbidden(self, ip: str) -> None:
        assert is_forbidden(ipaddress.ip_address(ip))

    @pytest.mark.parametrize("ip", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
    def test_public_addresses_are_allowed(self, ip: str) -> None:
        assert not is_forbidden(ipaddress.ip_address(ip))

    def test_names_are_checked_after_resolution(self) -> None:
        with pytest.raises(ForbiddenTarget, match="DELIVERY_ALLOW_PRIVATE_NETWORKS"):
            resolve_public("localhost", 80)

    def test_loopback_receiver_is_refused_before_any_request(
        self, httpserver: HTTPServer, guarded: WebhookDispatcher
    ) -> None:
        httpserver.expect_request("/hook").respond_with_data("", status=204)
        for url in (
            httpserver.url_for("/hook"),
            httpserver.url_for("/hook").replace("localhost", "127.0.0.1"),
        ):
            with pytest.raises(ForbiddenTarget):
                guarded.send(url, Payload(message="m"), context=CONTEXT)
        assert httpserver.log == []
