"""Send email over SMTP with the standard library: text, and HTML as its alternative.

One SMTP connection per worker thread, kept open between messages and made again when the
server has closed it. SMTP replies are translated once, in ``_refused`` and ``_translate``:
4xx and transport failures are retryable, 5xx permanent.
"""

import re
import smtplib
import ssl
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import Annotated, ClassVar, Literal, NoReturn, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import Field, SecretStr, field_validator, model_validator

from delivery.dispatchers.base import (
    Dispatcher,
    DispatcherConfig,
    SendContext,
    SendResult,
)
from delivery.dispatchers.protocol import EMAIL, AddressType
from delivery.errors import (
    ConfigurationError,
    DeliveryError,
    InvalidAddress,
    PermanentError,
    RecipientRejected,
    RetryableError,
)
from schemas import Payload

T = TypeVar("T")
TlsMode = Literal["none", "starttls", "implicit"]

#: The port each TLS mode conventionally uses (RFC 8314 for implicit TLS on 465).
DEFAULT_PORTS: dict[str, int] = {"none": 25, "starttls": 587, "implicit": 465}

#: Where common servers put their queue id in the reply to DATA: Postfix ("queued as
#: 4BXY…"), Exim ("id=1rAb…"), Sendmail ("u7J3AB… Message accepted for delivery").
_QUEUE_ID = re.compile(
    r"queued as\s+(?P<postfix>[\w.-]+)"
    r"|\bid=(?P<exim>[\w.-]+)"
    r"|^(?:\d\.\d\.\d\s+)?(?P<sendmail>\w{8,})\s+Message accepted",
    re.IGNORECASE,
)


def _email(value: str, *, what: str) -> str:
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{what} {value!r} is not an email address: {exc}") from None
    # The ASCII form has its domain IDNA-encoded; there is none when the local part is not
    # ASCII, and then the server must support SMTPUTF8.
    return checked.ascii_email or checked.normalized


#: Header lines are folded only past RFC 5322's hard limit, not its advised 78: Python
#: cannot fold a long unbroken value such as a List-Unsubscribe URL, and would write it as
#: RFC 2047 encoded words, which mail providers do not read as a URL.
MAX_LINE = 998
SMTP = policy.SMTP.clone(max_line_length=MAX_LINE)
SMTPUTF8 = policy.SMTPUTF8.clone(max_line_length=MAX_LINE)

#: A URL fit for a List-Unsubscribe header: http(s), printable ASCII, nothing that could
#: end the angle brackets or the header line, short enough for one line.
_HEADER_URL = re.compile(r"https?://[!#-;=?-~]+")


def _header_safe(url: str) -> bool:
    return len(url) <= MAX_LINE - 40 and _HEADER_URL.fullmatch(url) is not None


class EmailConfig(DispatcherConfig):
    host: str = Field(min_length=1, description="SMTP server name or IP address")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="SMTP port; by default 25, 587 or 465 by tls"
    )
    tls: TlsMode = Field(
        default="starttls",
        description="none, starttls (upgrade a plain connection) or implicit (TLS from the start)",
    )
    username: str | None = Field(default=None, description="Login name for SMTP AUTH")
    password: SecretStr | None = Field(default=None, description="Password for SMTP AUTH")
    from_address: str = Field(description="Envelope sender and From address")
    from_name: str | None = Field(default=None, description="Display name in the From header")
    reply_to: str | None = Field(default=None, description="Reply-To address")
    timeout: Annotated[float, Field(gt=0, le=120)] = Field(
        default=10.0, description="Seconds to wait for the server"
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM file of CA certificates to trust instead of the system's "
        "(for a private CA or a self-signed server certificate); must exist on every worker",
    )
    verify: bool = Field(
        default=True, description="Check the server's certificate and name (keep on outside tests)"
    )
    helo_name: str | None = Field(
        default=None, description="Name to announce in EHLO; by default this machine's FQDN"
    )

    @field_validator("from_address")
    @classmethod
    def _from_address(cls, value: str) -> str:
        return _email(value, what="from_address")

    @field_validator("reply_to")
    @classmethod
    def _reply_to(cls, value: str | None) -> str | None:
        return None if value is None else _email(value, what="reply_to")

    @model_validator(mode="after")
    def _credentials(self) -> "EmailConfig":
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together: set both or neither")
        if self.password is not None and self.tls == "none":
            raise ValueError("a password would cross the network in clear; use tls=starttls")
        return self

    @property
    def resolved_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.tls]


class EmailDispatcher(Dispatcher):
    slug = "email"
    verbose_name = "Email (SMTP)"
    protocol = EMAIL
    config_class = EmailConfig
    address_types: ClassVar[frozenset[AddressType]] = frozenset({AddressType.EMAIL})

    config: EmailConfig

    def validate_address(self, address: str) -> str:
        try:
            return _email(address, what="recipient")
        except ValueError as exc:
            raise InvalidAddress(str(exc), dispatcher=self.slug) from None

    def _send(self, address: str, payload: Payload, *, context: SendContext) -> SendResult:
        message = self._message(address, payload, context)
        return self._on_connection(lambda smtp: self._transact(smtp, address, message))

    def _on_connection(self, work: Callable[[smtplib.SMTP], T]) -> T:
        """Run ``work`` on this thread's connection, translating SMTP failures.

        Raises:
            RetryableError, PermanentError, ConfigurationError: see ``_translate``.
        """
        try:
            # A connection kept from an earlier message may have been closed by the server
            # since (idle timeout); that earns one reconnection, a fresh one none.
            for _ in range(2):
                fresh = False

                def connect() -> smtplib.SMTP:
                    nonlocal fresh
                    fresh = True
                    return self._connect()

                smtp = self.get_local("smtp", connect)
                try:
                    return work(smtp)
                except smtplib.SMTPServerDisconnected:
                    self.drop_local("smtp")
                    if fresh:
                        raise
            raise AssertionError("unreachable: a fresh connection either sends or raises")
        except DeliveryError:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            self._translate(exc)

    def _message(self, address: str, payload: Payload, context: SendContext) -> EmailMessage:
        config = self.config
        message = EmailMessage()
        if payload.subject:
            # Header values may not contain line breaks (header injection).
            message["Subject"] = " ".join(payload.subject.split())
        message["From"] = formataddr((config.from_name or "", config.from_address))
        message["To"] = address
        if config.reply_to:
            message["Reply-To"] = config.reply_to
        message["Date"] = formatdate(usegmt=True)
        # Given a domain, make_msgid does not look up this machine's name.
        message["Message-ID"] = make_msgid(domain=config.from_address.rpartition("@")[2])
        message["X-Delivery-ID"] = context.delivery_id
        if context.unsubscribe_url and _header_safe(context.unsubscribe_url):
            # RFC 8058: mail providers POST "List-Unsubscribe=One-Click" to the URL, so a
            # recipient can stop these messages without opening a page.
            message["List-Unsubscribe"] = f"<{context.unsubscribe_url}>"
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message.set_content(payload.message)
        if payload.html_message:
            message.add_alternative(payload.html_message, subtype="html")
        return message

    def _tls_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.config.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load ca_file {self.config.ca_file!r}: {exc}", dispatcher=self.slug
            ) from None
        if not self.config.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        smtp_class: Callable[..., smtplib.SMTP] = smtplib.SMTP
        extra: dict[str, object] = {}
        if config.tls == "implicit":
            smtp_class, extra = smtplib.SMTP_SSL, {"context": self._tls_context()}
        smtp = smtp_class(
            config.host,
            config.resolved_port,
            local_hostname=config.helo_name,
            timeout=config.timeout,
            **extra,
        )
        try:
            smtp.ehlo()
            if config.tls == "starttls":
                if not smtp.has_extn("starttls"):
                    raise ConfigurationError(
                        f"{config.host} does not offer STARTTLS; refusing to send in clear",
                        dispatcher=self.slug,
                    )
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if config.username is not None and config.password is not None:
                smtp.login(config.username, config.password.get_secret_value())
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _transact(self, smtp: smtplib.SMTP, address: str, message: EmailMessage) -> SendResult:
        sender = self.config.from_address
        options: list[str] = []
        international = not (sender + address).isascii()
        if international:
            if not smtp.has_extn("smtputf8"):
                raise RecipientRejected(
                    f"{self.config.host} cannot take non-ASCII addresses (no SMTPUTF8)",
                    dispatcher=self.slug,
                )
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        data = message.as_bytes(policy=SMTPUTF8 if international else SMTP)
        code, reply = smtp.mail(sender, options)
        if code != 250:
            self._refused(smtp, "MAIL FROM", code, reply)
        code, reply = smtp.rcpt(address)
        if code not in (250, 251):
            self._refused(smtp, "RCPT TO", code, reply, recipient=True)
        try:
            code, reply = smtp.data(data)
        except smtplib.SMTPDataError as exc:
            self._refused(smtp, "DATA", exc.smtp_code, exc.smtp_error)
        if code != 250:
            self._refused(smtp, "DATA", code, reply)
        text = _reply_text(reply)
        match = _QUEUE_ID.search(text)
        return SendResult(
            provider_ref=next((g for g in match.groups() if g), None) if match else None,
            status=code,
            detail={"message_id": str(message["Message-ID"]), "reply": text},
        )

    def _refusal(
        self, stage: str, code: int, reply: bytes | str, *, recipient: bool = False
    ) -> DeliveryError:
        """The error a refusal means: 5xx permanent (``RecipientRejected`` for RCPT TO),
        anything else retryable."""
        reason = f"{stage} refused by {self.config.host}: {code} {_reply_text(reply)}".strip()
        if 500 <= code < 600:
            cls = RecipientRejected if recipient else PermanentError
            return cls(reason, dispatcher=self.slug, status=code)
        return RetryableError(reason, dispatcher=self.slug, status=code)

    def _refused(
        self,
        smtp: smtplib.SMTP,
        stage: str,
        code: int,
        reply: bytes | str,
        *,
        recipient: bool = False,
    ) -> NoReturn:
        """Raise what a refusal means, leaving the connection ready for the next message.

        Raises:
            RetryableError: a 4xx reply (or one that makes no sense).
            RecipientRejected: a 5xx reply to RCPT TO.
            PermanentError: any other 5xx reply.
        """
        # 421 means the server is closing the connection; otherwise RSET ends the
        # transaction so the connection can carry the next message.
        if code == 421 or not _reset(smtp):
            self.drop_local("smtp")
        raise self._refusal(stage, code, reply, recipient=recipient)

    def _translate(self, exc: smtplib.SMTPException | OSError) -> NoReturn:
        """Raise the delivery error for a failure outside a transaction's replies.

        Raises:
            PermanentError: the server refused our login (5xx).
            ConfigurationError: the server cannot do what the channel asks (AUTH, TLS).
            RetryableError: connection failures, timeouts and 4xx replies.
        """
        self.drop_local("smtp")
        where = f"{self.config.host}:{self.config.resolved_port}"
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            # Not the server's text: some echo what was sent.
            reason = f"{where} refused the login ({exc.smtp_code})"
            if 500 <= exc.smtp_code < 600:
                raise PermanentError(reason, dispatcher=self.slug, status=exc.smtp_code) from exc
            raise RetryableError(reason, dispatcher=self.slug, status=exc.smtp_code) from exc
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            raise ConfigurationError(f"{where}: {exc}", dispatcher=self.slug) from exc
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise ConfigurationError(
                f"{where} has a certificate we do not trust ({exc.verify_message}); "
                "set ca_file to the CA that signed it",
                dispatcher=self.slug,
            ) from exc
        if isinstance(exc, smtplib.SMTPResponseException):
            code = exc.smtp_code
            reason = f"{where} replied {code} {_reply_text(exc.smtp_error)}"
            if 500 <= code < 600:
                raise PermanentError(reason, dispatcher=self.slug, status=code) from exc
            raise RetryableError(reason, dispatcher=self.slug, status=code) from exc
        raise RetryableError(
            f"cannot talk to {where}: {type(exc).__name__}: {exc}", dispatcher=self.slug
        ) from exc


def _reset(smtp: smtplib.SMTP) -> bool:
    try:
        return smtp.rset()[0] == 250
    except (smtplib.SMTPException, OSError):
        return False


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())[:300]
