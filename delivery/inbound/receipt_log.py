"""Provider receipts: status callbacks about messages a provider accepted.

A receipt is recorded against the delivery whose provider reference it names (Twilio's
message SID) and may move that delivery on from ``delivered``: to ``confirmed`` (the
handset has it) or ``bounced`` (the provider gave up after accepting it). A permanent
bounce puts the address on the channel's suppression list.

A receipt naming a reference no delivery has yet is kept (``early_receipts``) and answered
200 (an error would only have the provider send it again and again): Twilio may call back
before the worker has recorded the message SID, and the receipt is matched as soon as it
is (``delivery.log.early_receipts``).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Engine, Table, select

from delivery.clock import utcnow
from delivery.dispatchers.receipts import BOUNCED, CONFIRMED, PENDING, ProviderReceipt
from delivery.dispatchers.sms import SmsConfig
from delivery.dispatchers.twilio_status import (
    PERMANENT_BOUNCE_CODES,
    TWILIO_STATUSES,
    twilio_receipt_of,
)
from delivery.engine.channels import Channel
from delivery.engine.suppression import SuppressionList
from delivery.errors import (
    BadSignature,
    InvalidInbound,
    UnknownBackend,
)
from delivery.inbound.base import InboundRequest
from delivery.inbound.twilio import verify_twilio
from delivery.log import early_receipts
from delivery.log.tables import DeliveryRow

logger = logging.getLogger(__name__)

__all__ = [
    "BOUNCED",
    "CONFIRMED",
    "PENDING",
    "PERMANENT_BOUNCE_CODES",
    "TWILIO_STATUSES",
    "ProviderReceipt",
    "ReceiptBook",
    "RecordedReceipt",
    "read_receipt",
    "twilio_receipt",
]


@dataclass(frozen=True, slots=True)
class RecordedReceipt:
    delivery_id: str | None
    #: The delivery's new status, when the receipt moved it.
    moved_to: str | None
    duplicate: bool
    suppressed: bool


def twilio_receipt(channel: Channel, request: InboundRequest) -> ProviderReceipt:
    """A Twilio status callback to an SMS channel, verified with its own auth token.

    Raises:
        BadSignature: unsigned, wrongly signed, or for another account.
        InvalidInbound: no MessageSid or MessageStatus.
    """
    config = channel.config
    if not isinstance(config, SmsConfig):
        raise UnknownBackend(f"channel {channel.name!r} takes no Twilio receipts")
    verify_twilio(request, config.auth_token.get_secret_value())
    params = {k: v for k, v in request.params().items() if isinstance(v, str)}
    if params.get("AccountSid", config.account_sid) != config.account_sid:
        raise BadSignature("receipt is for another Twilio account")
    sid = params.get("MessageSid") or params.get("SmsSid")
    provider_status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    if not sid or not provider_status:
        raise InvalidInbound("MessageSid and MessageStatus: required")
    return twilio_receipt_of(
        sid,
        provider_status,
        params.get("ErrorCode") or None,
        to=params.get("To"),
        detail={k: params[k] for k in ("To", "From", "ErrorMessage") if k in params},
    )


#: Receipt readers by dispatcher slug: the dispatchers whose providers send receipts.
READERS: dict[str, Callable[[Channel, InboundRequest], ProviderReceipt]] = {
    "sms": twilio_receipt,
}


def read_receipt(channel: Channel, request: InboundRequest) -> ProviderReceipt:
    """Raises: UnknownBackend when the channel's dispatcher takes no receipts."""
    reader = READERS.get(channel.dispatcher)
    if reader is None:
        raise UnknownBackend(f"channel {channel.name!r} takes no receipts")
    return reader(channel, request)


_DELIVERIES = cast(Table, DeliveryRow.__table__)


class ReceiptBook:
    def __init__(self, engine: Engine, suppressions: SuppressionList) -> None:
        self.engine = engine
        self.suppressions = suppressions

    def record(self, channel: str, receipt: ProviderReceipt) -> RecordedReceipt:
        """Record the receipt, move its delivery on, suppress a permanently bouncing
        address; keep it for later when no delivery has its reference yet."""
        now = utcnow()
        with self.engine.begin() as connection:
            found = connection.execute(
                select(_DELIVERIES.c.id, _DELIVERIES.c.address).where(
                    _DELIVERIES.c.provider_ref == receipt.provider_ref,
                    _DELIVERIES.c.channel == channel,
                )
            ).first()
            if found is not None:
                applied = [
                    early_receipts.apply_receipt(
                        connection,
                        channel=channel,
                        delivery_id=found.id,
                        address=found.address,
                        receipt=receipt,
                        received_at=now,
                    )
                ]
            else:
                kept = early_receipts.keep(connection, channel, receipt, now)
        if found is None:
            # The worker may have recorded the reference between our look and our keeping
            # it (its transaction did not see ours): look once more, now ours is committed.
            with self.engine.begin() as connection:
                applied = early_receipts.match_kept(connection, channel, receipt.provider_ref)
            if not applied:
                logger.info(
                    "receipt on channel %s names reference %s (%s), not recorded yet; kept",
                    channel,
                    receipt.provider_ref,
                    receipt.provider_status,
                )
                # A permanent bounce names its number: no need to wait for the match.
                suppressed = bool(receipt.permanent and receipt.address) and self.suppressions.add(
                    channel,
                    receipt.address or "",
                    f"bounce {receipt.error_code}",
                    detail=f"receipt for {receipt.provider_ref}",
                )
                return RecordedReceipt(None, None, not kept, suppressed)
        suppressed = (
            early_receipts.suppress(self.engine, applied, suppressions=self.suppressions) > 0
        )
        mine = applied[-1]
        return RecordedReceipt(mine.delivery_id, mine.moved_to, mine.duplicate, suppressed)
