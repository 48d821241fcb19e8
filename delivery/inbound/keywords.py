"""Built-in keyword handlers: RapidSMS's echo app (``PING`` → ``PONG``) and SMS opt-out.

Both answer or act through the backend's reply channel (``--set channel=NAME``).
"""

from typing import ClassVar

from delivery.errors import PermanentError
from delivery.inbound.handler import Handler, HandlerContext, ReceivedMessage
from delivery.producer.publisher import send
from schemas import Payload

#: Twilio's standard opt-out keywords (its Advanced Opt-Out), and those that opt back in.
OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN = frozenset({"START", "YES", "UNSTOP"})
#: The reason an opt-out is recorded under; an opt-in removes only these.
OPT_OUT_REASON = "opt-out"


def _reply_channel(message: ReceivedMessage) -> str:
    if message.channel is None:
        raise PermanentError(
            f"backend {message.backend!r} has no reply channel: "
            f"`delivery inbound add {message.backend} {message.kind} --set channel=NAME --replace`"
        )
    return message.channel


class EchoHandler(Handler):
    """Answers ``PING`` with ``PONG`` through the backend's reply channel."""

    slug = "echo"
    keywords: ClassVar[frozenset[str]] = frozenset({"PING"})

    def handle(self, message: ReceivedMessage, context: HandlerContext) -> str | None:
        channel = _reply_channel(message)
        receipt = send(
            channel,
            message.identity,
            Payload(message="PONG"),
            idempotency_key=message.key(self.slug),
        )
        return f"replied PONG via {channel}: delivery {receipt.id}"


class OptOutHandler(Handler):
    """``STOP`` (and Twilio's other opt-out words) on a Twilio number puts the sender on
    the reply channel's suppression list; ``START`` takes them off again."""

    slug = "opt-out"
    kinds: ClassVar[frozenset[str]] = frozenset({"twilio"})
    keywords: ClassVar[frozenset[str]] = OPT_OUT | OPT_IN

    def accepts(self, message: ReceivedMessage) -> bool:
        # Twilio honours a keyword only as the whole message: "stop by later" is not one.
        return super().accepts(message) and message.text.strip().upper() == message.keyword

    def handle(self, message: ReceivedMessage, context: HandlerContext) -> str | None:
        channel = _reply_channel(message)
        if message.keyword in OPT_OUT:
            context.suppressions.add(
                channel, message.identity, OPT_OUT_REASON, detail=f"inbound {message.id}"
            )
            return f"{message.identity} suppressed on {channel}"
        removed = context.suppressions.remove(channel, message.identity, reason=OPT_OUT_REASON)
        return f"{message.identity} {'opted back in' if removed else 'was not opted out'}"
