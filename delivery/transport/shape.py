"""What a message must look like before kombu and Celery are allowed to touch it.

kombu and Celery trust the broker: they index, unpack and hash the fields of every message
inside the worker's consumer loop, so one wrong type (a list as ``delivery_tag``, a number
as ``timelimit``, a body that is not three items) is an "Unrecoverable error" that stops
the worker, and a missing ``delivery_info["exchange"]`` makes it reconnect for ever. The
checks here are the shape those code paths rely on (kombu's virtual ``Message`` and QoS,
Celery's protocol 2 as read by ``celery.worker.strategy``, ``Request`` and
``celery.app.trace``), so that a message which fails none of them cannot fail there either.

Each check returns why the message is refused, or None. ``inspect`` reads a queue item as
kombu's virtual transports keep it (Redis: one JSON document); ``amqp_problem`` checks an
AMQP message as py-amqp decoded it (RabbitMQ), through the same task rules.
"""

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

#: The largest item taken from a queue. A batch message from ``send_many`` carries at most
#: 500 envelopes of at most 256 KiB each, base64-encoded once; anything larger is not ours.
MAX_ITEM_BYTES = 256 * 1024 * 1024
#: Header strings (ids, task names, ``argsrepr``) are short; Celery truncates its reprs.
MAX_HEADER_STRING = 64 * 1024
#: The furthest ahead a task message may be due.
MAX_ETA_AHEAD = timedelta(days=1)
#: Retries beyond this are not a count any producer makes.
MAX_RETRIES = 1_000_000

Check = Callable[[Any], bool]


def _string(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_HEADER_STRING


def _optional(check: Check) -> Check:
    return lambda value: value is None or check(value)


def _count(limit: int) -> Check:
    return lambda value: type(value) is int and 0 <= value <= limit


def _timelimit(value: Any) -> bool:
    # Our tasks have no time limits: a provider timeout bounds every send. A limit in a
    # message would kill a prefork child mid-send, and the message, put back because its
    # worker was lost, would kill the next one: a loop.
    return isinstance(value, list) and value == [None, None]


def _timestamp(value: Any) -> bool:
    # Celery parses these with its own ISO 8601 reader and converts them to a POSIX time;
    # a date Python cannot convert (year 9999 in a zone ahead of UTC) fails it.
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        parsed = datetime.fromisoformat(value)
        parsed.timestamp()
    except (ValueError, OverflowError, OSError):
        return False
    return 1970 < parsed.year < 9000


def _eta(value: Any) -> bool:
    # Our producers park only short waits in the broker (DELIVERY_BROKER_DELAY_LIMIT, at
    # most minutes). A task due days ahead would sit in a worker's memory, and come back
    # from Redis again each visibility timeout: a copy per hour.
    if not _timestamp(value):
        return False
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed <= datetime.now(UTC) + MAX_ETA_AHEAD


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(map(_string, value))


#: Celery's protocol 2 headers, as the worker reads them. Others are allowed and ignored.
TASK_HEADERS: dict[str, tuple[bool, Check]] = {
    # name: (required, check)
    "task": (True, _string),
    "id": (True, _string),
    "lang": (False, _optional(_string)),
    "shadow": (False, _optional(_string)),
    "eta": (False, _optional(_eta)),
    "expires": (False, _optional(_timestamp)),
    "group": (False, _optional(_string)),
    "group_index": (False, _optional(_count(MAX_RETRIES))),
    "retries": (False, _optional(_count(MAX_RETRIES))),
    "timelimit": (False, _optional(_timelimit)),
    "root_id": (False, _optional(_string)),
    "parent_id": (False, _optional(_string)),
    "argsrepr": (False, _optional(lambda v: isinstance(v, str) and len(v) <= MAX_HEADER_STRING)),
    "kwargsrepr": (
        False,
        _optional(lambda v: isinstance(v, str) and len(v) <= MAX_HEADER_STRING),
    ),
    "origin": (False, _optional(_string)),
    "ignore_result": (False, _optional(lambda v: isinstance(v, bool))),
    "replaced_task_nesting": (False, _optional(_count(MAX_RETRIES))),
    "stamped_headers": (False, _optional(_strings)),
    "stamps": (False, _optional(lambda v: isinstance(v, dict))),
    # We never compress; kombu would try whatever codec a message names.
    "compression": (False, lambda v: v is None),
}

#: Canvas fields in the body's third item: what Celery calls after the task.
_EMBED: dict[str, Check] = {
    "callbacks": _optional(lambda v: isinstance(v, list) and all(isinstance(s, dict) for s in v)),
    "errbacks": _optional(lambda v: isinstance(v, list) and all(isinstance(s, dict) for s in v)),
    "chain": _optional(lambda v: isinstance(v, list) and all(isinstance(s, dict) for s in v)),
    "chord": _optional(lambda v: isinstance(v, dict)),
}


#: Where the message goes back to when it is restored: kombu's QoS reads both when it
#: records the message as unacknowledged, and again when it restores it. The exchange may
#: be "" (the default exchange), but it must be there.
DELIVERY_INFO: dict[str, tuple[bool, Check]] = {
    "exchange": (True, lambda v: isinstance(v, str)),
    "routing_key": (True, lambda v: isinstance(v, str)),
}


#: kombu's message properties, as its virtual transport and our QoS read them.
PROPERTIES: dict[str, tuple[bool, Check]] = {
    "delivery_tag": (True, _string),  # a hash field and a sorted-set member in Redis
    "delivery_info": (True, lambda v: isinstance(v, dict)),
    "body_encoding": (False, lambda v: v in (None, "base64")),
    "priority": (False, _optional(_count(255))),
    "reply_to": (False, _optional(_string)),
    "correlation_id": (False, _optional(_string)),
}


def _fields_problem(
    where: str, fields: Mapping[str, Any], expected: Mapping[str, tuple[bool, Check]]
) -> str | None:
    for name, (required, check) in expected.items():
        if name not in fields:
            if required:
                return f"{where}{name}: missing"
        elif not check(fields[name]):
            return f"{where}{name}: not what kombu and Celery expect"
    return None


def kombu_problem(message: Any) -> str | None:
    """Why ``message`` (a decoded queue item) is not a kombu message this transport can
    hold, acknowledge and restore; None if it is."""
    if not isinstance(message, dict):
        return "not a JSON object"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return "properties: not an object"
    problem = (
        _fields_problem("properties.", properties, PROPERTIES)
        or _fields_problem("properties.delivery_info.", properties["delivery_info"], DELIVERY_INFO)
        or _fields_problem("", message, _MESSAGE)
    )
    if problem is not None:
        return problem
    if properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(message["body"], validate=True)
        except (binascii.Error, ValueError):
            return "body: not base64"
    return None


_MESSAGE: dict[str, tuple[bool, Check]] = {
    "body": (True, lambda v: isinstance(v, str)),
    "headers": (False, _optional(lambda v: isinstance(v, dict))),
    "content-type": (False, _optional(_string)),
    "content-encoding": (False, _optional(_string)),
}


def task_problem(
    message: dict[str, Any], *, parse: Callable[[str], Any] = json.loads
) -> str | None:
    """Why a kombu message is not a Celery protocol 2 task message with a JSON body, as
    our workers accept; None if it is."""
    headers = message.get("headers")
    if not isinstance(headers, dict):
        return "headers: not an object"
    problem = _fields_problem("headers.", headers, TASK_HEADERS)
    if problem is not None:
        return problem
    if message.get("content-type") != "application/json":
        return "content-type: not application/json"
    if str(message.get("content-encoding", "")).lower() != "utf-8":
        return "content-encoding: not utf-8"
    return _body_problem(message, parse)


def _body_problem(message: Mapping[str, Any], parse: Callable[[str], Any]) -> str | None:
    raw: str | bytes = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        raw = base64.b64decode(raw)
    try:
        # kombu decodes the body as UTF-8 (the content-encoding checked above) before it
        # parses it; json.loads alone would also take UTF-16 and UTF-32.
        body = parse(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "body: not JSON"
    if not (isinstance(body, list) and len(body) == 3):
        return "body: not [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list):
        return "body: args not a list"
    if not isinstance(kwargs, dict):
        return "body: kwargs not an object"
    if embed is None:
        return None
    if not isinstance(embed, dict):
        return "body: embed not an object"
    for key, check in _EMBED.items():
        if not check(embed.get(key)):
            return f"body: embed.{key} not what Celery expects"
    return None


def inspect(item: bytes | str, *, task: bool = True) -> tuple[dict[str, Any] | None, str]:
    """The kombu message in ``item`` (a queue item: kombu's JSON) and "", or None and why
    it is refused.

    With ``task``, the message must also be a Celery task message our workers can run: a
    queue of tasks holds nothing else.
    """
    if len(item) > MAX_ITEM_BYTES:
        return None, f"larger than {MAX_ITEM_BYTES} bytes"
    try:
        message = loads(bytes_to_str(item))
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        return None, "not JSON"
    problem = kombu_problem(message)
    if problem is None and task:
        problem = task_problem(message)
    if problem is not None:
        return None, problem
    return message, ""


#: How deep AMQP header tables and arrays may nest (JSON headers from our producers: 2).
MAX_TABLE_DEPTH = 16


def _json_like_problem(value: Any, depth: int = 0) -> str | None:
    """Why an AMQP header value is not one a JSON message could carry (what Celery reads,
    copies into the task's request and publishes again on a retry); None if it is.

    AMQP tables carry more than JSON: byte arrays (and strings that are not UTF-8, which
    py-amqp hands over as bytes), timestamps, decimals, NaN; keys that are bytes.
    """
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str) and not _utf8(value):
            return "a string that is not UTF-8"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "a float that is not finite"
    if depth >= MAX_TABLE_DEPTH:
        return f"nested deeper than {MAX_TABLE_DEPTH}"
    if isinstance(value, list):
        return next(filter(None, (_json_like_problem(v, depth + 1) for v in value)), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not _utf8(key):
                return f"a key that is not a UTF-8 string ({key!r:.40})"
            problem = _json_like_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    return f"a {type(value).__name__}, which JSON has not"


def _utf8(text: str) -> bool:
    # py-amqp decodes with "surrogatepass": a lone surrogate cannot be encoded again.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: py-amqp's decoded basic properties that are strings on the wire (shortstr).
_AMQP_STRINGS = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


def amqp_problem(
    body: bytes, properties: Mapping[str, Any], *, task: bool = True, control: bool = False
) -> str | None:
    """Why an AMQP message (its body, and its basic properties as py-amqp decoded them)
    is not one kombu and Celery can take; None if it is.

    With ``task``, it must also be a Celery task message our workers can run, by the
    same rules as a queue item on Redis (``task_problem``): what differs between brokers
    is only how a message is laid out, so the rules live once, here. Otherwise it must be
    JSON kombu can decode, and with ``control`` a remote-control command a worker can read
    (``control_problem``).
    """
    if len(body) > MAX_ITEM_BYTES:
        return f"larger than {MAX_ITEM_BYTES} bytes"
    for name in _AMQP_STRINGS:
        value = properties.get(name)
        if value is not None and (not isinstance(value, str) or not _utf8(value)):
            return f"properties.{name}: not a UTF-8 string"
    headers = properties.get("application_headers")
    if headers is not None:
        if not isinstance(headers, dict):
            return "headers: not a table"
        problem = _json_like_problem(headers)
        if problem is not None:
            return f"headers: {problem}"
    if not task:
        problem = _json_problem(body, properties)
        if problem is None and control:
            problem = control_problem(loads(body), headers or {})
        return problem
    return task_problem(as_kombu_message(body, properties), parse=_kombu_json)


#: A remote-control command as kombu's ``pidbox.Node`` reads it (``handle_message``, then
#: ``dispatch(**command)``). A command of another shape raises there, and Celery then closes
#: and reopens the control channel from inside the connection's reader, which stops the
#: worker with py-amqp before 5.4.
CONTROL_FIELDS: dict[str, tuple[bool, Check]] = {
    "method": (True, _string),
    "arguments": (False, _optional(lambda v: isinstance(v, dict))),
    "destination": (False, _optional(_strings)),
    "pattern": (False, _optional(_string)),
    "matcher": (False, lambda v: v in (None, "glob", "pcre")),
    "reply_to": (
        False,
        _optional(
            lambda v: (
                isinstance(v, dict)
                and isinstance(v.get("exchange"), str)
                and isinstance(v.get("routing_key"), str)
            )
        ),
    ),
    "ticket": (False, _optional(_string)),
}


def control_problem(command: Any, headers: Mapping[str, Any]) -> str | None:
    """Why a decoded message on a worker's remote-control queue is not a command it can
    read; None if it is. What the command then does is the handler's business (an unknown
    method, wrong arguments: Celery answers with the error)."""
    if not isinstance(command, dict):
        return "body: not a remote-control command"
    problem = _fields_problem("body.", command, CONTROL_FIELDS)
    if problem is not None:
        return problem
    if command.get("matcher") == "pcre" and command.get("pattern") is not None:
        try:
            re.compile(command["pattern"])
        except (re.error, RecursionError, OverflowError):
            return "body.pattern: not a regular expression"
    clock = headers.get("clock")
    if clock is not None and not _count(2**63)(clock):
        return "headers.clock: not a logical clock"
    return None


def _kombu_json(text: str) -> Any:
    """kombu's JSON, as Celery decodes a body on RabbitMQ (py-amqp's bodies are read in the
    worker, not parsed beforehand as Redis queue items are): its object hooks turn
    ``{"__type__": …}`` into dates, decimals and bytes, and raise what their parsers raise.

    Raises:
        ValueError: ``text`` is not JSON kombu can decode.
    """
    try:
        return loads(text)
    except (ValueError, RecursionError):
        raise
    except Exception as exc:  # whatever a type's parser raises
        raise ValueError(f"kombu cannot decode it ({type(exc).__name__})") from exc


def _json_problem(body: bytes, properties: Mapping[str, Any]) -> str | None:
    """Why a message that is not a task (remote control, a reply, an event) is not JSON as
    kombu decodes it for Celery; None if it is. Celery handles a message it cannot decode by
    acknowledging it, which on a consumer without acknowledgements (remote control) is a
    channel error that stops the worker."""
    if properties.get("content_type") != "application/json":
        return "content-type: not application/json"
    if str(properties.get("content_encoding") or "utf-8").lower() != "utf-8":
        return "content-encoding: not utf-8"
    try:
        loads(body)  # kombu's, with its object hooks ({"__type__": …})
    except Exception:  # noqa: BLE001 - its hooks raise whatever their types' parsers raise
        return "body: not JSON kombu can decode"
    return None


def as_kombu_message(body: bytes, properties: Mapping[str, Any]) -> dict[str, Any]:
    """An AMQP message laid out as kombu's virtual transports keep one, for the checks
    above: what kombu's ``pyamqp.Message`` hands Celery (headers, content type and
    encoding, the body as it came)."""
    message: dict[str, Any] = {
        "body": body,
        "headers": properties.get("application_headers") or {},
        "properties": {},
    }
    for name, key in (("content_type", "content-type"), ("content_encoding", "content-encoding")):
        if properties.get(name) is not None:
            message[key] = properties[name]
    return message
