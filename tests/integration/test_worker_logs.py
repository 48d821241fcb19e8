"""A real worker at --loglevel debug keeps a channel's secret out of its log."""

import pytest
from pytest_httpserver import HTTPServer

import delivery
from schemas import Payload
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

SECRET_PATH = "/services/T0001/B0001/worker-log-secret-path"


def test_a_worker_at_debug_logs_no_webhook_url(redis_stack: Stack, httpserver: HTTPServer) -> None:
    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_data("ok")
    url = httpserver.url_for(SECRET_PATH)
    redis_stack.channels.add("ops-slack", "slack", {"webhook_url": url})
    worker = redis_stack.worker("--loglevel", "debug")
    receipt = delivery.send("ops-slack", "-", Payload(message="deploy done"))
    redis_stack.wait_until([receipt.id], {"delivered"}, timeout=30)
    assert len(httpserver.log) == 1
    output = worker.output()
    assert "DEBUG" in output and "[redacted]" in output  # libraries logged, and were redacted
    assert "worker-log-secret-path" not in output and url not in output
    # and the collector, paused while the worker started, is on again (delivery/collector.py)
    assert "automatic collection is on" in output
