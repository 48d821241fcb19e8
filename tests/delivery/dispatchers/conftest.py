"""Real local servers for the dispatcher tests: an SMTP server (aiosmtpd) and TLS material."""

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.servers import free_port


@dataclass
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, with its key, as PEM files."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_certificate(directory: Path) -> Certificate:
    """Write a fresh self-signed certificate and key into ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_file, key_file)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@dataclass
class Mail:
    #: The client's (address, port): the same for messages sent over one connection.
    peer: object
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    #: Whether the session was encrypted (STARTTLS or implicit TLS) and who logged in.
    encrypted: bool
    login: bytes | None


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps what it receives and answers from a script."""

    received: list[Mail] = field(default_factory=list)
    #: Replies to the next RCPT TO / DATA commands (then "250 OK" / a queued-as reply).
    rcpt_replies: list[str] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)
    #: Close the connection after answering the next DATA, as an idle server would.
    close_after_data: bool = False

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        transport = server.transport
        assert transport is not None and isinstance(envelope.content, bytes)
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(
            Mail(
                peer=session.peer,
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                message=message,
                encrypted=transport.get_extra_info("ssl_object") is not None,
                login=session.auth_data.login
                if isinstance(session.auth_data, LoginPassword)
                else None,
            )
        )
        if self.close_after_data:
            self.close_after_data = False
            # Runs once the reply below is written: the client sees 250, then end of file.
            asyncio.get_running_loop().call_soon(transport.close)
        return f"250 2.0.0 Ok: queued as Q{len(self.received):05d}"


@dataclass
class SmtpServer:
    mailbox: Mailbox
    port: int
    controller: Controller

    def stop(self) -> None:
        self.controller.stop()


def start_smtp(**kwargs: Any) -> SmtpServer:
    """An aiosmtpd server on a free loopback port; ``kwargs`` go to aiosmtpd's SMTP."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return SmtpServer(mailbox, port, controller)


SmtpFactory = Callable[..., SmtpServer]


def accept_user(user: str, password: str) -> Callable[..., AuthResult]:
    def authenticator(
        server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            user.encode(),
            password.encode(),
        )
        return AuthResult(success=ok, handled=False, auth_data=data)

    return authenticator


@pytest.fixture
def smtp_server() -> Iterator[SmtpFactory]:
    """Start aiosmtpd Controllers on free loopback ports; stop them after the test."""
    started: list[SmtpServer] = []

    def start(**kwargs: Any) -> SmtpServer:
        started.append(start_smtp(**kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()
