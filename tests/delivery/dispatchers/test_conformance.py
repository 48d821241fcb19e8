"""What every registered dispatcher must do (apprise's harness idea, with real servers).

Each built-in runs ``delivery.testing.DispatcherConformance``, the same checks a
third-party dispatcher's suite imports; HTTP ones get a row in ``HTTP_CASES`` (how to point
a config at a base URL, which address to send to and which path answers). The registry-wide
checks below are parametrized over ``DispatcherRegistry.from_installed()``, so a new
dispatcher is checked as soon as its entry point exists.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from delivery.dispatchers.base import DispatcherConfig
from delivery.dispatchers.protocol import AddressType, Protocol
from delivery.dispatchers.registry import DispatcherRegistry
from delivery.testing import DispatcherConformance, HttpTarget
from tests.conftest import webhook_secret

# apprise imports the standard library's deprecated imghdr (for PGPy) on Python < 3.13.
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")

REGISTRY = DispatcherRegistry.from_installed()
NAMES = REGISTRY.names()
TWILIO_SID = "AC" + "0" * 32

#: Field names that must be ``SecretStr`` wherever they appear.
SECRET_NAME = re.compile(r"password|token|secret|api_key|webhook_url", re.IGNORECASE)
#: The secret fields of the built-ins, so that dropping ``SecretStr`` from one is caught.
BUILT_IN_SECRETS = {
    "webhook": {"secret"},
    "console": set(),
    "email": {"password"},
    "slack": {"webhook_url", "bot_token"},
    "sms": {"auth_token"},
    "apprise": {"url"},
}


@dataclass(frozen=True)
class HttpCase:
    """How to aim one HTTP dispatcher at a server whose base URL is ``http://host:port``."""

    config: Callable[[str], dict[str, Any]]
    address: Callable[[str], str]
    path: str


HTTP_CASES: dict[str, HttpCase] = {
    "webhook": HttpCase(
        config=lambda base: {"secret": webhook_secret()},
        address=lambda base: f"{base}/hook",
        path="/hook",
    ),
    "slack": HttpCase(
        config=lambda base: {"bot_token": "xoxb-conformance", "api_base_url": f"{base}/api/"},
        address=lambda base: "#ops",
        path="/api/chat.postMessage",
    ),
    "sms": HttpCase(
        config=lambda base: {
            "account_sid": TWILIO_SID,
            "auth_token": "conformance-token",
            "from_number": "+14155550100",
            "api_base_url": base,
        },
        address=lambda base: "+14155552671",
        path=f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
    ),
    "apprise": HttpCase(
        config=lambda base: {},
        address=lambda base: f"json://{urlsplit(base).netloc}/hook",
        path="/hook",
    ),
}

#: Valid configs for the dispatchers that are not HTTP-based.
OTHER_CONFIGS: dict[str, dict[str, Any]] = {
    "console": {},
    "email": {
        "host": "127.0.0.1",
        "from_address": "a@example.com",
        "username": "u",
        "password": "conformance-password",
    },
}


def example_config(name: str) -> dict[str, Any]:
    if name in HTTP_CASES:
        return HTTP_CASES[name].config("http://127.0.0.1:9")
    return OTHER_CONFIGS[name]


def test_every_built_in_is_installed() -> None:
    # Catches typos in pyproject.toml's entry points.
    assert set(BUILT_IN_SECRETS) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_slug_matches_entry_point(name: str) -> None:
    cls = REGISTRY.get(name)
    assert cls.slug == name
    assert cls.verbose_name.strip()
    assert isinstance(cls.protocol, Protocol)
    assert cls.address_types and all(isinstance(t, AddressType) for t in cls.address_types)


@pytest.mark.parametrize("name", NAMES)
def test_config_rejects_unknown_keys_and_is_frozen(name: str) -> None:
    config_class = REGISTRY.get(name).config_class
    assert issubclass(config_class, DispatcherConfig)
    assert config_class.model_config.get("extra") == "forbid"
    assert config_class.model_config.get("frozen") is True
    with pytest.raises(ValidationError, match="no_such_option"):
        config_class.model_validate({"no_such_option": 1})


@pytest.mark.parametrize("name", NAMES)
def test_describe_is_json(name: str) -> None:
    described = REGISTRY.describe(name)
    assert described["slug"] == name
    assert json.loads(json.dumps(described)) == described
    fields = {field["name"] for field in described["config_fields"]}
    assert fields == set(REGISTRY.get(name).config_class.model_fields)


@pytest.mark.parametrize("name", NAMES)
def test_secret_fields_are_secret_str(name: str) -> None:
    config_class = REGISTRY.get(name).config_class
    secrets = config_class.secret_fields()
    looks_secret = {field for field in config_class.model_fields if SECRET_NAME.search(field)}
    assert looks_secret <= secrets, f"{name}: type these as SecretStr: {looks_secret - secrets}"
    if name in BUILT_IN_SECRETS:
        assert secrets == BUILT_IN_SECRETS[name]


def _conformance(name: str) -> type[DispatcherConformance]:
    http = HTTP_CASES.get(name)
    attributes = {
        "dispatcher_class": REGISTRY.get(name),
        "entry_point": name,
        "example_config": example_config(name),
        "valid_addresses": VALID_ADDRESSES[name],
        "invalid_addresses": INVALID_ADDRESSES[name],
        "http": HttpTarget(http.config, http.address, http.path) if http else None,
    }
    return type(f"Test{name.title()}Conformance", (DispatcherConformance,), attributes)


VALID_ADDRESSES: dict[str, list[str]] = {
    "webhook": ["https://example.com/hook"],
    "console": ["anyone"],
    "email": ["oncall@example.com"],
    "slack": ["#ops", "C0123ABCD"],
    "sms": ["+14155552671"],
    "apprise": ["json://example.com/notify"],
}
INVALID_ADDRESSES: dict[str, list[str]] = {
    "webhook": ["ftp://example.com/x", "not a url", "https://user:pw@example.com/"],
    "console": [],
    "email": ["not an address", "a@"],
    "slack": [""],
    "sms": ["not a number", "+1"],
    "apprise": [""],
}

TestWebhookConformance = _conformance("webhook")
TestConsoleConformance = _conformance("console")
TestEmailConformance = _conformance("email")
TestSlackConformance = _conformance("slack")
TestSmsConformance = _conformance("sms")
TestAppriseConformance = _conformance("apprise")
