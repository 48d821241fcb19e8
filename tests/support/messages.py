"""Real task messages as they lie on a Redis queue, and ways to spoil them.

A message is captured from the queue list after a real publish, then copied with a fresh
marker (the delivery id, the task id, the delivery tag) so each copy can be traced to
wherever the worker put it: the log, or the set-aside list.
"""

import base64
import copy
import json
import uuid
from typing import Any

import redis

import delivery
from delivery.transport.redis import SET_ASIDE
from schemas import Payload

#: A value for ``spoil``: remove the field instead.
DELETE = object()

#: Each of these stopped a worker ("Unrecoverable error") or left it reconnecting to the
#: broker for ever, before the transport checked the shape; found by pushing spoiled
#: copies of a real message at a real worker.
KILLERS: list[tuple[str, tuple[Any, ...], Any]] = [
    ("delivery_tag a list", ("properties", "delivery_tag"), [1]),
    ("delivery_tag an object", ("properties", "delivery_tag"), {"a": 1}),
    ("delivery_tag null", ("properties", "delivery_tag"), None),
    ("delivery_info empty (reconnect loop)", ("properties", "delivery_info"), {}),
    ("no exchange (reconnect loop)", ("properties", "delivery_info", "exchange"), DELETE),
    ("no routing_key (reconnect loop)", ("properties", "delivery_info", "routing_key"), DELETE),
    ("body_encoding a number", ("properties", "body_encoding"), 7),
    ("body_encoding a list", ("properties", "body_encoding"), [1]),
    ("body_encoding unknown", ("properties", "body_encoding"), "rot13"),
    ("headers a string", ("headers",), "zz"),
    ("headers a number", ("headers",), 7),
    ("task a list", ("headers", "task"), ["x"]),
    ("task an object", ("headers", "task"), {"a": 1}),
    ("no task id (reconnect loop)", ("headers", "id"), DELETE),
    ("task id a list", ("headers", "id"), [1, 2]),
    ("timelimit a number", ("headers", "timelimit"), 7),
    ("timelimit one item", ("headers", "timelimit"), ["x"]),
    ("timelimit an object", ("headers", "timelimit"), {"a": 1}),
    ("timelimit true", ("headers", "timelimit"), True),
    ("stamped_headers a number", ("headers", "stamped_headers"), 7),
    ("content-type missing", ("content-type",), DELETE),
    ("content-type a list", ("content-type",), [1]),
    ("content-encoding a number", ("content-encoding",), 1),
    ("body empty", ("body",), ""),
    ("body an object", ("body",), "eyJhIjogMX0="),  # {"a": 1}
    ("body two items", ("body", 2), DELETE),
]

#: Celery read these and dropped them (logged, then acknowledged): now set aside.
DROPPED: list[tuple[str, tuple[Any, ...], Any]] = [
    ("unknown task", ("headers", "task"), "delivery.nope"),
    ("pickle", ("content-type",), "application/x-python-serialize"),
    ("unreadable eta", ("headers", "eta"), "next tuesday"),
    ("eta years ahead", ("headers", "eta"), "2999-01-01T00:00:00+00:00"),
]


def capture(client: redis.Redis, address: str, *, queue: str = "delivery") -> dict[str, Any]:
    """Publish one delivery and take its message off the queue before any worker does."""
    delivery.send("hooks", address, Payload(message="template"))
    item = client.rpop(queue)
    assert isinstance(item, bytes), "nothing was published"
    return dict(json.loads(item))


def body_of(message: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(message["body"]))


def with_body(message: dict[str, Any], body: Any) -> dict[str, Any]:
    message["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return message


def fresh(template: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A copy of ``template`` for a new delivery, and its marker (the delivery id)."""
    marker = str(uuid.uuid4())
    message = copy.deepcopy(template)
    message["headers"]["id"] = message["headers"]["root_id"] = marker
    message["properties"]["delivery_tag"] = message["properties"]["correlation_id"] = marker
    args, kwargs, embed = body_of(message)
    args[0]["id"] = marker
    return with_body(message, [args, kwargs, embed]), marker


def spoil(message: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """Set (or delete, with DELETE) the field at ``path``; ``("body", i, …)`` reaches into
    the decoded body, which is encoded again afterwards."""
    if path and path[0] == "body" and len(path) > 1:
        body = body_of(message)
        _put(body, path[1:], value)
        return with_body(message, body)
    _put(message, path, value)
    return message


def _put(target: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


def set_aside_markers(client: redis.Redis) -> str:
    """Everything on the set-aside list, bodies decoded, as one text to search for markers."""
    texts = []
    items: list[bytes] = client.lrange(SET_ASIDE, 0, -1)  # type: ignore[assignment]
    for item in items:
        text = item.decode(errors="replace")
        texts.append(text)
        try:
            body = json.loads(text).get("body")
            texts.append(base64.b64decode(body).decode(errors="replace"))
        except Exception:  # anything at all can be on the list
            continue
    return "\n".join(texts)
