import base64
import json

import pytest

from delivery.transport.redis import decode


def kombu_message(**overrides: object) -> bytes:
    message: dict[str, object] = {
        "body": base64.b64encode(b"[]").decode(),
        "content-type": "application/json",
        "properties": {
            "delivery_tag": "t1",
            "delivery_info": {"routing_key": "delivery"},
            "body_encoding": "base64",
        },
        "headers": {},
    }
    message.update(overrides)
    return json.dumps(message).encode()


def test_a_kombu_message_decodes() -> None:
    decoded = decode(kombu_message())
    assert decoded is not None and decoded["properties"]["delivery_tag"] == "t1"


@pytest.mark.parametrize(
    "item",
    [
        b"\x00\xffnot json",
        b"[1, 2, 3]",
        b'{"body": "x"}',
        json.dumps({"body": "nope", "headers": {}}).encode(),
        kombu_message(body=12),
        kombu_message(body="!!! not base64 !!!"),
        kombu_message(properties={"delivery_info": {}}),
    ],
)
def test_anything_else_is_refused(item: bytes) -> None:
    assert decode(item) is None
