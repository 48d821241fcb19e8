"""The one sealed-config store channels and inbound backends share: secrets encrypted at
rest, opened with the key, masked (names only) when listed, and unreadable with another."""

from delivery.dispatchers.base import MASK
from delivery.dispatchers.webhook import WebhookConfig
from delivery.engine.crypto import SecretBox, generate_key
from delivery.engine.sealed import UNREADABLE, SealedConfigs
from delivery.log import DeliveryLog
from delivery.log.inbound import InboundBackendRow
from delivery.log.tables import ChannelRow
from schemas import Settings
from tests.conftest import webhook_secret


def test_secrets_are_sealed_opened_and_masked(settings: Settings) -> None:
    log = DeliveryLog.from_settings(settings)
    key = generate_key()
    sealed = SealedConfigs(log.engine, ChannelRow, lambda: SecretBox(key))
    secret = webhook_secret()
    plain, token = sealed.seal(WebhookConfig(secret=secret))
    assert token is not None and secret not in token and "secret" not in plain
    row = ChannelRow(name="c", config=plain, secrets=token)
    assert sealed.unseal(row)["secret"] == secret
    assert sealed.masked(row)["secret"] == MASK
    # Another key opens nothing, and listing says so rather than failing
    stranger = SealedConfigs(log.engine, ChannelRow, lambda: SecretBox(generate_key()))
    assert stranger.masked(row)["secrets"] == UNREADABLE


def test_backends_are_kept_by_the_same_store(settings: Settings) -> None:
    log = DeliveryLog.from_settings(settings)
    sealed = SealedConfigs(log.engine, InboundBackendRow, lambda: SecretBox(generate_key()))
    assert sealed.all() == [] and sealed.get("none") is None and not sealed.remove("none")
