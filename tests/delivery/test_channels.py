import json

import pytest
from sqlalchemy import text

from delivery.dispatchers.registry import DispatcherRegistry
from delivery.engine.channels import ChannelStore, parse_rate_limit, parse_retry_schedule
from delivery.engine.crypto import SecretBox, generate_key
from delivery.errors import ConfigurationError, SecretKeyMissing, UnknownChannel
from delivery.log import DeliveryLog
from schemas import Settings
from tests.conftest import webhook_secret


@pytest.fixture
def store(settings: Settings) -> ChannelStore:
    engine = DeliveryLog.from_settings(settings).engine
    return ChannelStore(
        engine, DispatcherRegistry.from_installed(), lambda: SecretBox.from_settings(settings)
    )


def test_config_is_validated_when_added(store: ChannelStore) -> None:
    with pytest.raises(
        ConfigurationError,
        match="unknown field 'secrett'; allowed fields: secret, timeout, headers",
    ):
        store.add("hooks", "webhook", {"secrett": webhook_secret()})
    with pytest.raises(ConfigurationError, match="timeout: Input should be a valid number"):
        store.add("hooks", "webhook", {"secret": webhook_secret(), "timeout": "soon"})
    with pytest.raises(ConfigurationError, match="secret: required"):
        store.add("hooks", "webhook", {})
    with pytest.raises(ConfigurationError, match="whsec_"):
        store.add("hooks", "webhook", {"secret": "hunter2"})
    with pytest.raises(ConfigurationError, match="channel name"):
        store.add("bad name", "console", {})


def test_secrets_are_encrypted_at_rest_and_masked(store: ChannelStore, settings: Settings) -> None:
    secret = webhook_secret()
    store.add(
        "hooks",
        "webhook",
        {"secret": secret, "timeout": "5"},
        retry_schedule=(0, 5),
        rate_limit="1/s",
    )
    engine = DeliveryLog.from_settings(settings).engine
    with engine.connect() as conn:
        raw = json.dumps(
            [list(row) for row in conn.execute(text("SELECT * FROM channels"))], default=str
        )
    assert secret not in raw and secret.removeprefix("whsec_") not in raw
    [summary] = store.summaries()
    assert summary["config"] == {"secret": "********", "timeout": 5.0, "headers": {}}
    channel = store.get("hooks")
    assert channel.config.secret.get_secret_value() == secret  # type: ignore[attr-defined]
    assert channel.retry_schedule == (0, 5) and channel.rate_limit == "1/s"


def test_wrong_or_missing_key_is_a_clear_error(
    store: ChannelStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add("hooks", "webhook", {"secret": webhook_secret()})
    engine = DeliveryLog.from_settings(settings).engine
    wrong = ChannelStore(
        engine, DispatcherRegistry.from_installed(), lambda: SecretBox(generate_key())
    )
    with pytest.raises(ConfigurationError, match="not the key they were saved with"):
        wrong.get("hooks")
    monkeypatch.delenv("DELIVERY_SECRET_KEY")
    keyless = Settings()
    with pytest.raises(SecretKeyMissing, match="DELIVERY_SECRET_KEY"):
        SecretBox.from_settings(keyless)
    with pytest.raises(ConfigurationError, match="not a Fernet key"):
        SecretBox("not-a-key")


def test_add_twice_needs_replace_and_remove_works(store: ChannelStore) -> None:
    store.add("dev", "console", {})
    with pytest.raises(ConfigurationError, match="exists"):
        store.add("dev", "console", {})
    store.add("dev", "console", {}, replace=True)
    assert store.remove("dev") and not store.remove("dev")
    with pytest.raises(UnknownChannel):
        store.get("dev")


def test_rate_limits_and_schedules_parse() -> None:
    assert (
        parse_rate_limit("1/s") == 1
        and parse_rate_limit("60/m") == 1
        and parse_rate_limit("7200/h") == 2
    )
    for bad in ("fast", "0/s", "1/d"):
        with pytest.raises(ConfigurationError):
            parse_rate_limit(bad)
    assert parse_retry_schedule("0,5,300") == (0, 5, 300)
    for bad in ("", "a,b", "-1", ",".join(["1"] * 51)):
        with pytest.raises(ConfigurationError):
            parse_retry_schedule(bad)
