"""A delivery published before its address was erased, still in the broker at the erasure
(no log row for the erasure to find): the worker that takes it afterwards records it
``erased`` and sends nothing. Published with ``delivery.send`` into the in-memory broker,
read back with its headers, and run by the worker's tasks (``apply``, the header in the
request) or the coalescer's ``Pending``."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.message import Message
from typer.testing import CliRunner

import delivery
from delivery.cli import app, deliveries, erase  # noqa: F401 - registers the commands
from delivery.engine.assembly import Assembly, assemble
from delivery.log.counts import totals
from delivery.producer.celery_config import PUBLISHED_AT_HEADER
from schemas import Envelope, Settings
from tests.conftest import webhook_secret
from tests.support.memory_broker import take_waiting
from workers.coalesce import Pending

runner = CliRunner()


@pytest.fixture
def tasks(settings: Settings) -> Iterator[Any]:
    from workers import tasks as module

    module.close_service()
    yield module
    module.close_service()


@pytest.fixture
def assembly(settings: Settings) -> Assembly:
    from delivery.cli import context

    context.registry.cache_clear()
    built = assemble(settings, channel_ttl=0)
    built.channels.add("hooks", "webhook", {"secret": webhook_secret()})
    return built


def published() -> list[tuple[str, list[Any], dict[str, Any]]]:
    """Every task message waiting in the in-memory broker: its task, arguments, headers."""
    return [(message.task, message.args, message.headers) for message in take_waiting()]


def erase_address(address: str) -> dict[str, int]:
    result = runner.invoke(app, ["erase", address, "--json"])
    assert result.exit_code == 0, result.stderr
    counts: dict[str, int] = json.loads(result.stdout)
    return counts


def status_of(delivery_id: str) -> dict[str, Any]:
    result = runner.invoke(app, ["status", delivery_id, "--json"])
    assert result.exit_code == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_a_message_published_before_the_erasure_is_erased_unsent(
    tasks: Any, assembly: Assembly, httpserver: Any
) -> None:
    httpserver.expect_request("/ann/T0K3N").respond_with_data("ok")
    ann = httpserver.url_for("/ann/T0K3N")
    # Given a delivery to Ann published, still in the broker (no worker has taken it)
    receipt = delivery.send("hooks", ann, {"message": "your code is 493817"})
    [(task, args, headers)] = published()
    assert task == "delivery.deliver"
    assert isinstance(headers[PUBLISHED_AT_HEADER], float)
    # When Ann is erased (the log has nothing of hers yet), then a worker takes the message
    assert erase_address(ann)["deliveries"] == 0
    result = tasks.deliver.apply(
        args=args, task_id=receipt.id, headers={PUBLISHED_AT_HEADER: headers[PUBLISHED_AT_HEADER]}
    )
    # Then nothing is sent, and the delivery ends erased, without the address or content
    assert result.state == "SUCCESS", result.result
    assert httpserver.log == []
    shown = status_of(receipt.id)
    assert (shown["status"], shown["address"], shown["payload"]) == ("erased", "[erased]", None)
    with assembly.log.engine.connect() as connection:
        assert totals(connection).ended[("hooks", "erased")] == 1
    # and the message coming back again changes nothing
    tasks.deliver.apply(args=args, headers={PUBLISHED_AT_HEADER: headers[PUBLISHED_AT_HEADER]})
    assert httpserver.log == []
    with assembly.log.engine.connect() as connection:
        assert totals(connection).ended[("hooks", "erased")] == 1


def test_a_message_published_after_the_erasure_is_sent(
    tasks: Any, assembly: Assembly, httpserver: Any
) -> None:
    httpserver.expect_request("/ann/T0K3N").respond_with_data("ok")
    ann = httpserver.url_for("/ann/T0K3N")
    # Given Ann erased, and then a new delivery to her published
    erase_address(ann)
    receipt = delivery.send("hooks", ann, {"message": "welcome back"})
    [(_, args, headers)] = published()
    # When a worker takes it, then it is sent as any other
    tasks.deliver.apply(args=args, headers={PUBLISHED_AT_HEADER: headers[PUBLISHED_AT_HEADER]})
    assert len(httpserver.log) == 1
    assert status_of(receipt.id)["status"] == "delivered"


def test_a_message_from_an_older_producer_is_sent_as_before(
    tasks: Any, assembly: Assembly, httpserver: Any
) -> None:
    httpserver.expect_request("/ann/T0K3N").respond_with_data("ok")
    ann = httpserver.url_for("/ann/T0K3N")
    receipt = delivery.send("hooks", ann, {"message": "hello"})
    [(_, args, _)] = published()
    erase_address(ann)
    # A message without the header (a producer older than it) is not checked: sent
    tasks.deliver.apply(args=args)
    assert len(httpserver.log) == 1
    assert status_of(receipt.id)["status"] == "delivered"


@pytest.mark.parametrize(
    "header", [1e300, -1e300, -1.0, 2**63, float("nan"), float("inf"), True, "1.5", [1.0], None]
)
def test_a_header_that_is_no_time_is_not_checked_and_breaks_nothing(
    tasks: Any, assembly: Assembly, httpserver: Any, header: Any
) -> None:
    # A crafted message: the header's name right, its value anything
    httpserver.expect_request("/ann/T0K3N").respond_with_data("ok")
    ann = httpserver.url_for("/ann/T0K3N")
    receipt = delivery.send("hooks", ann, {"message": "hello"})
    [(_, args, _)] = published()
    erase_address(ann)
    tasks.deliver.apply(args=args, headers={PUBLISHED_AT_HEADER: header})
    # As a message from an older producer: sent, not a failure of the task
    assert len(httpserver.log) == 1
    assert status_of(receipt.id)["status"] == "delivered"


def test_a_batch_erases_only_the_erased_address(
    tasks: Any, assembly: Assembly, httpserver: Any
) -> None:
    for path in ("/ann/T0K3N", "/bob/1"):
        httpserver.expect_request(path).respond_with_data("ok")
    ann, bob = httpserver.url_for("/ann/T0K3N"), httpserver.url_for("/bob/1")
    # Given deliveries to Ann and Bob published together (one or more batch messages)
    receipts = delivery.send_many(
        [{"channel": "hooks", "address": a, "payload": {"message": "hi"}} for a in (ann, bob)]
    )
    messages = published()
    assert all(PUBLISHED_AT_HEADER in headers for _, _, headers in messages)
    envelopes = [e for task, args, _ in messages for e in (args[0] if "batch" in task else args)]
    when = min(headers[PUBLISHED_AT_HEADER] for _, _, headers in messages)
    # When Ann is erased, then a worker takes both in one batch
    erase_address(ann)
    tasks.deliver_batch.apply(args=[envelopes], headers={PUBLISHED_AT_HEADER: when})
    # Then Bob's is sent and Ann's erased, unsent
    assert [entry[0].path for entry in httpserver.log] == ["/bob/1"]
    assert [status_of(r.id)["status"] for r in receipts] == ["erased", "delivered"]


def test_the_coalescer_reads_each_message_s_publish_time(
    assembly: Assembly, httpserver: Any
) -> None:
    httpserver.expect_request("/ann/T0K3N").respond_with_data("ok")
    ann = httpserver.url_for("/ann/T0K3N")
    # Given a message to Ann published before her erasure, and one to Bob after it
    first = delivery.send("hooks", ann, {"message": "hi"})
    [before] = published()
    erase_address(ann)
    second = delivery.send("hooks", ann, {"message": "welcome back"})
    [after] = published()
    pending = [
        Pending(message, print, Envelope.model_validate(args[0]), args[0], headers, 0)
        for _, args, headers in (before, after)
        for message in [Message(body=json.dumps([args, {}, {}]), headers=headers)]
    ]
    assert [p.published_at for p in pending] == [
        h[PUBLISHED_AT_HEADER] for *_, h in (before, after)
    ]
    # When both are delivered in one coalesced batch, each with its own publish time
    decisions = assembly.service.deliver_many(
        [p.envelope for p in pending], published_at=[p.published_at for p in pending]
    )
    # Then the first is erased unsent, the second sent
    assert [d.action for d in decisions] == ["done", "done"]
    assert len(httpserver.log) == 1
    assert [status_of(r.id)["status"] for r in (first, second)] == ["erased", "delivered"]


def test_a_batch_all_erased_sends_nothing_and_counts_each_once(
    assembly: Assembly, httpserver: Any
) -> None:
    httpserver.expect_request("/ann/T0K3N").respond_with_data("ok")
    ann = httpserver.url_for("/ann/T0K3N")
    # Given two deliveries to Ann published, and then Ann erased
    receipts = delivery.send_many(
        [{"channel": "hooks", "address": ann, "payload": {"message": f"hi {i}"}} for i in range(2)]
    )
    messages = published()
    envelopes = [e for task, args, _ in messages for e in (args[0] if "batch" in task else args)]
    envelopes = [Envelope.model_validate(e) for e in envelopes]
    when = min(headers[PUBLISHED_AT_HEADER] for _, _, headers in messages)
    erase_address(ann)
    # When a batch of both and a copy of the first is delivered, and once more
    for _ in range(2):
        decisions = assembly.service.deliver_many([*envelopes, envelopes[0]], published_at=when)
        assert [d.action for d in decisions] == ["done"] * 3
    # Then nothing is sent, each ends erased, and each is counted once
    assert httpserver.log == []
    assert [status_of(r.id)["status"] for r in receipts] == ["erased", "erased"]
    with assembly.log.engine.connect() as connection:
        assert totals(connection).ended[("hooks", "erased")] == 2
