import pytest
from pydantic import ValidationError

from schemas import MAX_PAYLOAD_BYTES, Envelope, Message, Payload


def test_payload_defaults_and_freedom_of_data() -> None:
    payload = Payload(message="hi", data={"order": {"id": 42, "lines": [1, 2]}})
    assert payload.subject is None and payload.html_message is None
    assert payload.model_dump(mode="json")["data"]["order"]["id"] == 42


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        Payload.model_validate({"message": "hi", "colour": "red"})


def test_oversized_payload_is_refused_where_it_enters() -> None:
    with pytest.raises(ValidationError, match=f"limit is {MAX_PAYLOAD_BYTES}"):
        Payload(message="x" * (MAX_PAYLOAD_BYTES + 1))


@pytest.mark.parametrize("channel", ["", "has space", "x" * 65, "-leading"])
def test_channel_names_are_identifiers(channel: str) -> None:
    with pytest.raises(ValidationError):
        Message(channel=channel, address="a", payload=Payload(message="m"))


def test_message_rejects_negative_countdown_and_empty_address() -> None:
    with pytest.raises(ValidationError):
        Message(channel="c", address="a", payload=Payload(message="m"), countdown=-1)
    with pytest.raises(ValidationError):
        Message(channel="c", address="   ", payload=Payload(message="m"))


def test_envelope_round_trips_as_json_and_carries_its_version() -> None:
    envelope = Envelope(id="abc", channel="c", address="a", payload=Payload(message="m"))
    raw = envelope.model_dump(mode="json")
    assert raw["schema_version"] == 1
    assert Envelope.model_validate(raw) == envelope
    with pytest.raises(ValidationError):
        Envelope.model_validate({**raw, "schema_version": 99})


def _fields(exc: ValidationError) -> set[str]:
    return {".".join(str(part) for part in error["loc"]) for error in exc.errors()}


GOOD = {"channel": "c", "address": "a", "payload": {"message": "m"}}


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("address", {"address": "a\x00b"}),
        ("idempotency_key", {"idempotency_key": "k\x00"}),
        ("channel", {"channel": "c\x00"}),
        ("payload.message", {"payload": {"message": "m\x00"}}),
        ("payload.subject", {"payload": {"message": "m", "subject": "\x00"}}),
        ("payload.html_message", {"payload": {"message": "m", "html_message": "<p>\x00</p>"}}),
        ("payload.data", {"payload": {"message": "m", "data": {"k": ["ok", {"n": "\x00"}]}}}),
        ("payload.data", {"payload": {"message": "m", "data": {"k\x00": 1}}}),
        # lone surrogates have no UTF-8 form: neither the log nor a provider can take them
        ("address", {"address": "a\ud800"}),
        ("payload.message", {"payload": {"message": "\udfff"}}),
        ("payload.data", {"payload": {"message": "m", "data": {"k": "\ud800"}}}),
    ],
)
def test_what_the_log_cannot_store_is_refused_naming_the_field(
    field: str, changes: dict[str, object]
) -> None:
    with pytest.raises(ValidationError) as caught:
        Message.model_validate({**GOOD, **changes})
    assert field in _fields(caught.value)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_data_is_strict_json_however_deep(number: float) -> None:
    with pytest.raises(ValidationError, match="not JSON") as caught:
        Payload(message="m", data={"a": [1, {"b": [number]}]})
    assert _fields(caught.value) == {"data"}


def test_the_size_limit_counts_utf8_bytes() -> None:
    # 100,000 characters of three bytes each: under the limit in characters, not in bytes
    with pytest.raises(ValidationError, match=f"limit is {MAX_PAYLOAD_BYTES}"):
        Payload(message="€" * 100_000)
    Payload(message="€" * 80_000)  # 240,000 bytes: fits


@pytest.mark.parametrize("countdown", [float("inf"), float("nan"), 1e12, 400 * 24 * 3600.0])
def test_countdowns_are_finite_and_at_most_a_year(countdown: float) -> None:
    import delivery

    # the producer's own entry point, before anything reaches a broker
    with pytest.raises(ValidationError) as caught:
        delivery.send("c", "a", Payload(message="m"), countdown=countdown)
    assert _fields(caught.value) == {"countdown"}
    Message.model_validate({**GOOD, "countdown": 364 * 24 * 3600.0})


def test_an_envelope_from_another_producer_is_held_to_the_same_rules() -> None:
    with pytest.raises(ValidationError) as caught:
        Envelope.model_validate({**GOOD, "id": "d\x00", "payload": {"message": "m\x00"}})
    assert _fields(caught.value) == {"id", "payload.message"}
