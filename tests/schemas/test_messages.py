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
