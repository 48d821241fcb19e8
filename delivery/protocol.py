"""What a transport can carry, and adapting a payload to it — in one place, not per dispatcher."""

import enum
from dataclasses import dataclass

from delivery.errors import PayloadRejected
from schemas import Payload


class AddressType(enum.StrEnum):
    URL = "url"
    EMAIL = "email"
    PHONE = "phone"
    SLACK_CHANNEL = "slack-channel"
    APPRISE_URL = "apprise-url"
    ANY = "any"


class SubjectHandling(enum.StrEnum):
    KEEP = "keep"  # the transport has a subject field
    FOLD = "fold"  # no subject field: it becomes the first line of the text
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    subject: SubjectHandling = SubjectHandling.KEEP
    html: bool = True
    #: Whether a payload with HTML but no text may be converted to text for this transport.
    html_to_text: bool = True
    #: Longest text the transport takes, in characters; ``None`` for no limit.
    max_length: int | None = None

    def adapt(self, payload: Payload) -> Payload:
        """Return the payload as this transport can carry it.

        Raises:
            PayloadRejected: nothing left to send, or the text is longer than allowed.
        """
        message = payload.message
        if not message.strip() and payload.html_message and not self.html:
            if not self.html_to_text:
                raise PayloadRejected(
                    f"{self.name} carries text only and the payload has only HTML"
                )
            message = html_to_text(payload.html_message)
        subject = payload.subject
        if subject and self.subject is SubjectHandling.FOLD:
            message = f"{subject}\n\n{message}" if message else subject
        if self.subject is not SubjectHandling.KEEP:
            subject = None
        if not message.strip() and not (self.html and payload.html_message):
            raise PayloadRejected("the payload has no text to send")
        if self.max_length is not None and len(message) > self.max_length:
            raise PayloadRejected(
                f"{self.name} takes at most {self.max_length} characters; this is {len(message)}"
            )
        return payload.model_copy(
            update={
                "message": message,
                "subject": subject,
                "html_message": payload.html_message if self.html else None,
            }
        )

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "subject": self.subject.value,
            "html": self.html,
            "max_length": self.max_length,
        }


def html_to_text(html: str) -> str:
    # Imported here: html2text is only needed by text-only transports fed HTML.
    import html2text

    converter = html2text.HTML2Text()
    converter.body_width = 0  # providers wrap for themselves
    converter.ignore_images = True
    return str(converter.handle(html)).strip()


WEBHOOK = Protocol("webhook")
CONSOLE = Protocol("console")
EMAIL = Protocol("email")
SLACK = Protocol("slack", subject=SubjectHandling.FOLD, html=False, max_length=40_000)
#: Twilio accepts up to 1,600 characters and splits them into segments itself.
SMS = Protocol("sms", subject=SubjectHandling.FOLD, html=False, html_to_text=False, max_length=1600)
PLAIN = Protocol("plain", subject=SubjectHandling.FOLD, html=False)
