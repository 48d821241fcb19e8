"""What a transport can carry, and adapting a payload to it — in one place, not per dispatcher."""

import enum
from dataclasses import dataclass
from typing import Literal

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
    #: How a folded subject is written above the text (Slack makes it bold).
    fold_format: str = "{subject}"
    #: Whether a payload with HTML but no text gets a text part made from the HTML while
    #: keeping the HTML (email's multipart/alternative wants both).
    derive_text: bool = False

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
        elif not message.strip() and payload.html_message and self.derive_text:
            message = html_to_text(payload.html_message)
        subject = payload.subject
        if subject and self.subject is SubjectHandling.FOLD:
            heading = self.fold_format.format(subject=subject.strip())
            message = f"{heading}\n\n{message}" if message.strip() else heading
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


#: The GSM 03.38 default alphabet. Text entirely within it (and the extension table) is
#: sent as 7-bit GSM; one character outside it makes the whole message UCS-2.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: The extension table: each of these costs two septets (an escape, then the character).
_GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")


@dataclass(frozen=True, slots=True)
class Segments:
    """How an SMS text travels: its encoding and the number of parts it is split into."""

    encoding: Literal["GSM-7", "UCS-2"]
    count: int


def sms_segments(text: str) -> Segments:
    """The parts ``text`` takes as an SMS.

    One part holds 160 GSM-7 septets or 70 UCS-2 code units; once a text must be split,
    each part loses room to the concatenation header (153 and 67). An escape pair or a
    surrogate pair is never split across parts, as handsets would show garbage.
    """
    encoding: Literal["GSM-7", "UCS-2"]
    if all(c in _GSM7_BASIC or c in _GSM7_EXTENDED for c in text):
        encoding, single, multi = "GSM-7", 160, 153
        units = [2 if c in _GSM7_EXTENDED else 1 for c in text]
    else:
        encoding, single, multi = "UCS-2", 70, 67
        units = [2 if ord(c) > 0xFFFF else 1 for c in text]
    if sum(units) <= single:
        return Segments(encoding, 1)
    count, used = 1, 0
    for unit in units:
        if used + unit > multi:
            count, used = count + 1, 0
        used += unit
    return Segments(encoding, count)


WEBHOOK = Protocol("webhook")
CONSOLE = Protocol("console")
EMAIL = Protocol("email", derive_text=True)
#: Slack's mrkdwn shows the folded subject in bold; the dispatcher sends the text as mrkdwn.
SLACK = Protocol(
    "slack", subject=SubjectHandling.FOLD, html=False, max_length=40_000, fold_format="*{subject}*"
)
#: Twilio accepts up to 1,600 characters and splits them into segments itself.
SMS = Protocol("sms", subject=SubjectHandling.FOLD, html=False, html_to_text=False, max_length=1600)
PLAIN = Protocol("plain", subject=SubjectHandling.FOLD, html=False)
#: Apprise takes a title and one body; services without titles fold it in themselves.
APPRISE = Protocol("apprise", html=False)
