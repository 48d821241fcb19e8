"""The RabbitMQ transport's checks, without a broker: the shape of an AMQP message as py-amqp
decodes it (``shape.amqp_problem``), the tolerant frame reader, and the settings that
select the transport."""

import base64
import json
import math
import struct
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from amqp.serialization import decode_properties_basic  # type: ignore[import-untyped]

from delivery.producer.celery_config import celery_config
from delivery.transport.amqp import frame_handler, is_control_queue, is_task_queue
from delivery.transport.shape import MAX_TABLE_DEPTH, amqp_problem
from schemas import Settings
from tests.delivery.test_redis_transport import task_message
from tests.support.amqp_messages import Raw, nested, properties_bytes, timestamp
from tests.support.messages import DELETE, DROPPED, KILLERS, spoil


def amqp_message(message: dict[str, Any] | None = None) -> tuple[bytes, dict[str, Any]]:
    """A Redis-layout task message as py-amqp hands it over: body bytes, properties."""
    message = message or task_message()
    properties: dict[str, Any] = {
        "application_headers": message.get("headers"),
        "delivery_mode": 2,
        "priority": 0,
        "correlation_id": "d1",
        "reply_to": "r1",
    }
    for key, name in (("content-type", "content_type"), ("content-encoding", "content_encoding")):
        if key in message:
            properties[name] = message[key]
    return base64.b64decode(message["body"]), properties


def test_a_real_task_message_passes() -> None:
    assert amqp_problem(*amqp_message()) is None


#: Killers of the Redis layout that AMQP can carry at all (the rest are the broker's to set,
#: or have a fixed wire type).
ON_AMQP = [
    (name, path, value)
    for name, path, value in KILLERS + DROPPED
    if path[0] in ("headers", "content-type", "content-encoding", "body")
    and (path[0] != "headers" or len(path) > 1)
    and (path[0] in ("headers", "body") or value is DELETE or isinstance(value, str))
    and name != "unknown task"  # a well-formed message: Celery refuses it, tasks set it aside
]


@pytest.mark.parametrize(("name", "path", "value"), ON_AMQP, ids=[k[0] for k in ON_AMQP])
def test_each_known_killer_is_refused(name: str, path: tuple[Any, ...], value: Any) -> None:
    body, properties = amqp_message(spoil(task_message(), path, value))
    assert amqp_problem(body, properties) is not None


def test_the_bug_report_a_task_header_and_an_empty_object() -> None:
    problem = amqp_problem(b"{}", {"application_headers": {"task": "delivery.deliver", "id": "x"}})
    assert problem is not None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"\xff\xfe", "bytes"),
        (datetime(2030, 1, 1), "datetime"),
        (Decimal("1.5"), "Decimal"),
        (math.nan, "not finite"),
        (math.inf, "not finite"),
        ("\ud800", "not UTF-8"),
        ({b"\xff": 1}, "key"),
        ({"a": [1, {"b": b"x"}]}, "bytes"),
    ],
)
def test_header_values_json_cannot_carry_are_refused(value: Any, why: str) -> None:
    body, properties = amqp_message()
    properties["application_headers"] = {**properties["application_headers"], "x-other": value}
    problem = amqp_problem(body, properties)
    assert problem is not None and why in problem


def test_tables_nested_too_deep_are_refused() -> None:
    body, properties = amqp_message()
    deep: Any = 1
    for _ in range(MAX_TABLE_DEPTH + 1):
        deep = [deep]
    properties["application_headers"]["x-deep"] = deep
    problem = amqp_problem(body, properties)
    assert problem is not None and "nested" in problem


def test_json_like_headers_of_other_names_pass() -> None:
    body, properties = amqp_message()
    properties["application_headers"]["x-trace"] = {"ids": [1, 2.5, None, True, "a\x00b"]}
    assert amqp_problem(body, properties) is None


@pytest.mark.parametrize(
    "body",
    [
        b"\xff" + json.dumps([[], {}, {}]).encode(),
        json.dumps([[], {}, {}]).encode("utf-16"),
        b"",
        b"{}",
        b"[1, 2, 3]",
    ],
)
def test_bodies_kombu_and_celery_cannot_read_are_refused(body: bytes) -> None:
    _, properties = amqp_message()
    assert amqp_problem(body, properties) is not None


def test_a_body_kombu_cannot_decode_is_refused() -> None:
    # kombu's JSON hooks: a "__type__" object is parsed as a date (Celery would drop it)
    _, properties = amqp_message()
    body = json.dumps([[{"__type__": "datetime", "__value__": "soon"}], {}, {}]).encode()
    assert amqp_problem(body, properties) == "body: not JSON"
    fine = json.dumps([[{"__type__": "datetime", "__value__": "2030-01-01"}], {}, {}]).encode()
    assert amqp_problem(fine, properties) is None


def test_property_strings_must_be_utf8() -> None:
    body, properties = amqp_message()
    properties["correlation_id"] = "\udcff"
    assert amqp_problem(body, properties) == "properties.correlation_id: not a UTF-8 string"


def test_messages_off_task_queues_need_not_be_tasks() -> None:
    reply = json.dumps({"ok": "pong"}).encode()
    assert amqp_problem(reply, {"content_type": "application/json"}, task=False) is None
    assert amqp_problem(reply, {"application_headers": {"x": b"\xff"}}, task=False) is not None
    # …but they must be JSON kombu can decode: Celery acknowledges one it cannot, which on
    # the remote-control consumer (no acknowledgements) is a channel error.
    json_type = {"content_type": "application/json"}
    assert amqp_problem(b"not json", json_type, task=False) == "body: not JSON kombu can decode"
    hooked = b'{"__type__": "datetime", "__value__": "x"}'
    assert amqp_problem(hooked, json_type, task=False) == "body: not JSON kombu can decode"
    pickled = {"content_type": "application/x-python-serialize"}
    assert amqp_problem(b"\x80\x04K\x01.", pickled, task=False) is not None
    latin = {**json_type, "content_encoding": "latin-1"}
    assert amqp_problem(b"{}", latin, task=False) == "content-encoding: not utf-8"
    # and on a worker's remote-control queue, a command kombu's pidbox can read
    ping = json.dumps({"method": "ping", "arguments": {}, "destination": ["w@h"]}).encode()
    assert amqp_problem(ping, json_type, task=False, control=True) is None
    for bad in ([1], {}, {"method": "ping", "arguments": 5}, {"method": "p", "matcher": "x"}):
        assert amqp_problem(json.dumps(bad).encode(), json_type, task=False, control=True)
    clocked = {**json_type, "application_headers": {"clock": "soon"}}
    assert amqp_problem(ping, clocked, task=False, control=True) == (
        "headers.clock: not a logical clock"
    )
    assert is_control_queue("w@h.celery.pidbox")
    assert not is_control_queue("8f1c.reply.celery.pidbox")
    assert is_task_queue("delivery")
    assert not is_task_queue("celery@host.celery.pidbox")
    assert not is_task_queue("8f1c.reply.celery.pidbox")
    assert not is_task_queue("celeryev.1f2e")


# -- the frame reader --------------------------------------------------------------------

DELIVER = struct.pack(">HH", 60, 60) + b"arguments"


def _read(properties: bytes, body: bytes) -> list[Any]:
    delivered: list[Any] = []
    on_frame = frame_handler(SimpleNamespace(bytes_recv=0), lambda *args: delivered.append(args[3]))
    on_frame((1, 1, DELIVER))
    on_frame((2, 1, struct.pack(">HHQ", 60, 0, len(body)) + properties))
    on_frame((3, 1, body))
    return delivered


@pytest.mark.parametrize(
    ("headers", "content_type", "error"),
    [
        # (py-amqp's versions read timestamps with different calls, which fail differently)
        ({"x-when": timestamp(2**62)}, b"application/json", "OSError|OverflowError|ValueError"),
        ({"x-deep": nested(20_000)}, b"application/json", "RecursionError"),
        ({}, b"\xff\xfe", "UnicodeDecodeError"),
        ({"x": Raw(b"Z")}, b"application/json", "FrameSyntaxError"),
    ],
)
def test_properties_py_amqp_cannot_decode_do_not_break_the_connection(
    headers: dict[str, Any], content_type: bytes, error: str
) -> None:
    raw = properties_bytes(headers={"task": "t", **headers}, content_type=content_type)
    assert raw is not None
    # py-amqp's own reader raises out of the connection here
    with pytest.raises(Exception):  # noqa: B017 - whatever py-amqp raises
        decode_properties_basic(raw, 0)
    [msg] = _read(raw, b"the body, whole")
    assert msg.body == b"the body, whole"
    assert msg.properties == {}
    assert msg.undecodable in {f"properties: cannot be decoded ({e})" for e in error.split("|")}
    assert msg.raw_properties == raw


def test_properties_that_decode_are_read_as_py_amqp_reads_them() -> None:
    raw = properties_bytes(headers={"task": "t", "n": 1}, correlation_id=b"c1")
    assert raw is not None
    [msg] = _read(raw, b"[[], {}, {}]")
    assert msg.properties["application_headers"] == {"task": "t", "n": 1}
    assert msg.properties["correlation_id"] == "c1"
    assert not hasattr(msg, "undecodable")


def test_a_bodyless_message_with_undecodable_properties_is_delivered_at_once() -> None:
    delivered: list[Any] = []
    on_frame = frame_handler(SimpleNamespace(bytes_recv=0), lambda *a: delivered.append(a[3]))
    raw = properties_bytes(content_type=b"\xff")
    assert raw is not None
    on_frame((1, 1, DELIVER))
    assert on_frame((2, 1, struct.pack(">HHQ", 60, 0, 0) + raw)) is True
    assert delivered[0].undecodable


# -- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("amqp://guest:guest@rabbit:5672//", "delivery.transport.amqp:Transport"),
        ("pyamqp://rabbit//", "delivery.transport.amqp:Transport"),
        ("amqps://rabbit//", "delivery.transport.amqp:SSLTransport"),
    ],
)
def test_an_amqp_url_selects_the_hardened_transport_with_confirms(
    url: str, transport: str, tmp_path: Any
) -> None:
    settings = Settings(broker_url=url, home=tmp_path)
    assert settings.is_amqp_broker and not settings.is_redis_broker
    config = celery_config(settings)
    assert config["broker_transport"] == transport
    assert config["broker_transport_options"]["confirm_publish"] is True


def test_an_amqps_url_keeps_tls() -> None:
    from kombu.connection import Connection

    connection = Connection(
        "amqps://u:p@rabbit//", transport="delivery.transport.amqp:SSLTransport"
    )
    assert connection.transport.client.ssl is True
    assert connection.transport.default_connection_params["port"] == 5671


def test_publishes_to_rabbitmq_are_mandatory_and_bounded(tmp_path: Any) -> None:
    from delivery.producer.publisher import Publisher

    publisher = Publisher(
        Settings(broker_url="amqp://rabbit//", home=tmp_path, publish_timeout=3.0)
    )
    assert publisher._amqp_options == {"mandatory": True, "timeout": 3.0, "confirm_timeout": 3.0}
    redis = Publisher(Settings(broker_url="redis://localhost/0", home=tmp_path))
    assert redis._amqp_options == {}


def test_spoiling_helpers_agree_with_the_redis_layout() -> None:
    # The same spoil paths reach the same fields in both layouts.
    message = spoil(task_message(), ("headers", "id"), DELETE)
    _, properties = amqp_message(message)
    assert "id" not in properties["application_headers"]
