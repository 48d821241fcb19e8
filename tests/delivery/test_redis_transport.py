import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from delivery.transport.shape import inspect
from tests.support.messages import DELETE, DROPPED, KILLERS, spoil


def task_message() -> dict[str, Any]:
    """A task message as Celery 5 publishes it to Redis (captured from a real publish)."""
    envelope = {"id": "d1", "channel": "hooks", "address": "https://a", "payload": {"message": "m"}}
    body = [[envelope], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": "delivery.deliver", "id": "d1", "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": "d1", "parent_id": None,
            "argsrepr": "[{...}]", "kwargsrepr": "{}", "origin": "gen1@host",
            "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": "d1", "reply_to": "r1", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "delivery"}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": "t1",
        },
    }  # fmt: skip


def encoded(message: Any) -> bytes:
    return json.dumps(message).encode()


def _decode(item: bytes | str, *, task: bool = True) -> dict[str, Any] | None:
    return inspect(item, task=task)[0]


def test_a_task_message_decodes() -> None:
    decoded = _decode(encoded(task_message()))
    assert decoded is not None and decoded["properties"]["delivery_tag"] == "t1"


def test_a_control_reply_need_not_be_a_task() -> None:
    reply = task_message()
    reply["headers"] = {}
    assert _decode(encoded(reply)) is None
    assert _decode(encoded(reply), task=False) is not None


def test_an_eta_within_a_day_decodes() -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert _decode(encoded(spoil(task_message(), ("headers", "eta"), soon))) is not None


@pytest.mark.parametrize(
    "item",
    [
        b"\x00\xffnot json",
        b"[1, 2, 3]",
        b'{"body": "x"}',
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps({"body": "nope", "headers": {}}).encode(),
        encoded(spoil(task_message(), ("body",), 12)),
        encoded(spoil(task_message(), ("body",), "!!! not base64 !!!")),
        encoded(spoil(task_message(), ("properties",), {"delivery_info": {}})),
    ],
)
def test_anything_else_is_refused(item: bytes) -> None:
    assert _decode(item) is None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(path, value, id=name)
        for name, path, value in KILLERS + DROPPED
        # Known to Celery or not, a task name is a string: Celery's refusal is set aside.
        if name != "unknown task"
    ],
)
def test_each_shape_that_stopped_a_worker_is_refused(path: tuple[Any, ...], value: Any) -> None:
    message, problem = inspect(encoded(spoil(task_message(), path, value)))
    assert message is None
    assert problem  # the reason the transport logs


def test_the_reason_names_the_field() -> None:
    spoiled = spoil(task_message(), ("headers", "timelimit"), 7)
    assert inspect(encoded(spoiled)) == (
        None,
        "headers.timelimit: not what kombu and Celery expect",
    )
    deleted = spoil(task_message(), ("properties", "delivery_info", "exchange"), DELETE)
    assert inspect(encoded(deleted))[1] == "properties.delivery_info.exchange: missing"
