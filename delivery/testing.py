"""Conformance checks for dispatchers: what every built-in passes, for yours to pass too.

Import this from a third-party dispatcher's own pytest suite (it needs pytest, which this
project does not install at run time) and subclass ``DispatcherConformance``::

    from delivery.testing import DispatcherConformance, HttpTarget
    from delivery_fax import FaxDispatcher


    class TestFaxConformance(DispatcherConformance):
        dispatcher_class = FaxDispatcher
        example_config = {"gateway": "https://fax.example.com", "token": "t"}
        valid_addresses = ["+441234567890"]
        invalid_addresses = ["not a number"]
        http = HttpTarget(
            config=lambda base: {"gateway": base, "token": "t"},
            address=lambda base: "+441234567890",
            path="/faxes",
        )

pytest collects the inherited ``test_*`` methods: the class attributes are sane, the config
model is frozen and refuses unknown fields, fields named like secrets are ``SecretStr`` and
never shown, ``describe_fields()`` is JSON, good addresses pass and bad ones raise
``InvalidAddress``; with ``http`` set, a local server answering 503 gives a retryable
error, 400 a permanent one, and a refused connection a retryable one. The servers are the
standard library's, on loopback, so no other test dependency is needed.
"""

import contextlib
import http.server
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr, ValidationError

from delivery.dispatchers.base import (
    MASK,
    Dispatcher,
    DispatcherConfig,
    DispatcherEnvironment,
    SendContext,
)
from delivery.dispatchers.protocol import AddressType, Protocol
from delivery.dispatchers.registry import DispatcherRegistry
from delivery.errors import InvalidAddress, PermanentError, RetryableError
from schemas import Payload

__all__ = [
    "CONTEXT",
    "SECRET_NAME",
    "DispatcherConformance",
    "HttpTarget",
    "LoopbackServer",
]

#: Field names that must be ``SecretStr`` wherever they appear.
SECRET_NAME = re.compile(r"password|token|secret|api_key|webhook_url|auth", re.IGNORECASE)
#: The send context the checks use.
CONTEXT = SendContext(delivery_id="conformance-1", channel="conformance")
#: The checks' servers are on loopback, which dispatchers refuse by default (SSRF).
LOOPBACK = DispatcherEnvironment(allow_private_networks=True)


@dataclass(frozen=True)
class HttpTarget:
    """How to aim an HTTP dispatcher at a server whose base URL is ``http://host:port``."""

    #: A valid config that sends to ``base``.
    config: Callable[[str], dict[str, Any]]
    #: The address to send to.
    address: Callable[[str], str]
    #: The path the dispatcher's request arrives at.
    path: str


class LoopbackServer:
    """A local HTTP server that answers every request with one status and JSON body, and
    counts what reached ``path``."""

    def __init__(self, status: int, *, path: str, body: dict[str, Any] | None = None) -> None:
        self.hits = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path.split("?")[0] == path:
                    server.hits += 1
                data = json.dumps(body or {"error": "conformance"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the checks report what matters

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _refused_base() -> str:
    """The base URL of a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class DispatcherConformance:
    """Subclass with the attributes below set; pytest runs the inherited checks."""

    dispatcher_class: ClassVar[type[Dispatcher]]
    #: A valid config (secrets included) for the checks that need one instance.
    example_config: ClassVar[dict[str, Any]] = {}
    #: Addresses ``validate_address`` must accept, and ones it must refuse.
    valid_addresses: ClassVar[list[str]] = []
    invalid_addresses: ClassVar[list[str]] = []
    #: For HTTP dispatchers: how to aim them at a local server.
    http: ClassVar[HttpTarget | None] = None
    #: The entry-point name it registers as, if it should be installed (checks pyproject).
    entry_point: ClassVar[str | None] = None

    @contextlib.contextmanager
    def dispatcher(self, raw: dict[str, Any]) -> Iterator[Dispatcher]:
        cls = self.dispatcher_class
        made = cls(cls.config_class.model_validate(raw), environment=LOOPBACK)
        try:
            yield made
        finally:
            made.close()

    def test_class_attributes(self) -> None:
        cls = self.dispatcher_class
        assert isinstance(cls.slug, str) and re.fullmatch(r"[a-z][a-z0-9_-]*", cls.slug)
        assert cls.verbose_name.strip()
        assert isinstance(cls.protocol, Protocol)
        assert cls.address_types and all(isinstance(t, AddressType) for t in cls.address_types)

    def test_registered_under_its_slug(self) -> None:
        if self.entry_point is None:
            pytest.skip("no entry_point given")
        registry = DispatcherRegistry.from_installed()
        assert registry.get(self.entry_point) is self.dispatcher_class

    def test_config_refuses_unknown_fields_and_is_frozen(self) -> None:
        config_class = self.dispatcher_class.config_class
        assert issubclass(config_class, DispatcherConfig)
        assert config_class.model_config.get("extra") == "forbid"
        assert config_class.model_config.get("frozen") is True
        with pytest.raises(ValidationError, match="no_such_option"):
            config_class.model_validate({**self.example_config, "no_such_option": 1})

    def test_fields_named_like_secrets_are_secret(self) -> None:
        config_class = self.dispatcher_class.config_class
        secrets = config_class.secret_fields()
        looks_secret = {name for name in config_class.model_fields if SECRET_NAME.search(name)}
        assert looks_secret <= secrets, f"type these as SecretStr: {looks_secret - secrets}"

    def test_secrets_do_not_show(self) -> None:
        config = self.dispatcher_class.config_class.model_validate(self.example_config)
        values = [
            value.get_secret_value()
            for name in config.model_fields_set
            if isinstance(value := getattr(config, name), SecretStr) and value.get_secret_value()
        ]
        described = json.dumps(config.describe_fields())
        for shown in (repr(config), str(config), config.model_dump_json(), described):
            for value in values:
                assert value not in shown
        assert all(f["default"] in (None, MASK) for f in config.describe_fields() if f["secret"])

    def test_describe_fields_is_json(self) -> None:
        fields = self.dispatcher_class.config_class.describe_fields()
        assert json.loads(json.dumps(fields)) == fields
        assert {f["name"] for f in fields} == set(self.dispatcher_class.config_class.model_fields)

    def test_addresses(self) -> None:
        with self.dispatcher(self.example_config) as dispatcher:
            for address in self.valid_addresses:
                assert dispatcher.validate_address(address)
            for address in self.invalid_addresses:
                with pytest.raises(InvalidAddress):
                    dispatcher.validate_address(address)

    def _send_to(self, status: int) -> int:
        target = self._http_target()
        with (
            LoopbackServer(status, path=target.path) as server,
            self.dispatcher(target.config(server.base)) as dispatcher,
        ):
            error = RetryableError if status >= 500 else PermanentError
            with pytest.raises(error):
                dispatcher.send(target.address(server.base), Payload(message="hi"), context=CONTEXT)
            return server.hits

    def _http_target(self) -> HttpTarget:
        if self.http is None:
            pytest.skip("not an HTTP dispatcher (no `http` target given)")
        return self.http

    def test_503_is_retryable(self) -> None:
        assert self._send_to(503) == 1

    def test_400_is_permanent(self) -> None:
        assert self._send_to(400) == 1

    def test_connection_refused_is_retryable(self) -> None:
        target = self._http_target()
        base = _refused_base()
        with self.dispatcher(target.config(base)) as dispatcher, pytest.raises(RetryableError):
            dispatcher.send(target.address(base), Payload(message="hi"), context=CONTEXT)
