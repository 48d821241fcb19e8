"""Provider receipts: status callbacks about messages a provider accepted.

A receipt is recorded against the delivery whose provider reference it names (Twilio's
message SID) and may move that delivery on from ``delivered``: to ``confirmed`` (the
handset has it) or ``bounced`` (the provider gave up after accepting it). A receipt naming
a reference no delivery has is recorded all the same and answered 200: an error would
only have the provider send it again and again. A permanent bounce puts the address on
the channel's suppression list.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Engine, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite

from delivery.clock import utcnow
from delivery.dispatchers.sms import SmsConfig
from delivery.engine.channels import Channel
from delivery.engine.suppression import SuppressionList
from delivery.errors import (
    BadSignature,
    InvalidInbound,
    UnknownBackend,
)
from delivery.inbound.base import InboundRequest
from delivery.inbound.twilio import verify_twilio
from delivery.log.inbound import ReceiptRow
from delivery.log.tables import DeliveryRow, Status

logger = logging.getLogger(__name__)

CONFIRMED, BOUNCED, PENDING = Status.CONFIRMED.value, Status.BOUNCED.value, "pending"

#: Twilio's final MessageStatus values and what they mean here; the rest are on the way.
TWILIO_STATUSES = {
    "delivered": CONFIRMED,
    "read": CONFIRMED,
    "undelivered": BOUNCED,
    "failed": BOUNCED,
}
#: Twilio error codes that say the number will never take messages from this sender:
#: 21610 the recipient replied STOP (unsubscribed), 21211 / 21614 not a valid (mobile)
#: number, 30005 unknown destination handset (the number does not exist or is no longer
#: in service), 30006 a landline or a carrier that cannot take SMS. 30003 (unreachable
#: handset: switched off, out of coverage) and 30008 (unknown error) are temporary and
#: do not suppress.
PERMANENT_BOUNCE_CODES = frozenset({"21211", "21610", "21614", "30005", "30006"})


@dataclass(frozen=True, slots=True)
class ProviderReceipt:
    provider_ref: str
    provider_status: str
    #: confirmed, bounced or pending.
    status: str
    error_code: str | None = None
    #: The recipient, as the provider names it (for the suppression list).
    address: str | None = None
    #: Suppress the address: the bounce is permanent.
    permanent: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


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
    provider_status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
    if not sid or not provider_status:
        raise InvalidInbound("MessageSid and MessageStatus: required")
    code = params.get("ErrorCode") or None
    status = TWILIO_STATUSES.get(provider_status, PENDING)
    return ProviderReceipt(
        provider_ref=sid[:255],
        provider_status=provider_status[:32],
        status=status,
        error_code=code[:32] if code else None,
        address=params.get("To"),
        permanent=status == BOUNCED and code in PERMANENT_BOUNCE_CODES,
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


_RECEIPTS = cast(Table, ReceiptRow.__table__)
_DELIVERIES = cast(Table, DeliveryRow.__table__)


class ReceiptBook:
    def __init__(self, engine: Engine, suppressions: SuppressionList) -> None:
        self.engine = engine
        self.suppressions = suppressions
        self._insert: Any = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert

    def record(self, channel: str, receipt: ProviderReceipt) -> RecordedReceipt:
        """Record the receipt, move its delivery on, suppress a permanently bouncing address."""
        now = utcnow()
        with self.engine.begin() as connection:
            found = connection.execute(
                select(_DELIVERIES.c.id, _DELIVERIES.c.address).where(
                    _DELIVERIES.c.provider_ref == receipt.provider_ref,
                    _DELIVERIES.c.channel == channel,
                )
            ).first()
            delivery_id = found.id if found is not None else None
            inserted = connection.execute(
                self._insert(_RECEIPTS)
                .values(
                    channel=channel,
                    delivery_id=delivery_id,
                    provider_ref=receipt.provider_ref,
                    status=receipt.status,
                    provider_status=receipt.provider_status,
                    error_code=receipt.error_code,
                    received_at=now,
                    detail=receipt.detail,
                )
                .on_conflict_do_nothing()
                # What was inserted is what comes back: psycopg's rowcount here is -1.
                .returning(_RECEIPTS.c.id)
            ).first()
            moved_to = None
            if delivery_id is not None and receipt.status in (CONFIRMED, BOUNCED):
                # Only an accepted delivery moves on; callbacks may arrive out of order.
                moved = connection.execute(
                    update(_DELIVERIES)
                    .where(
                        _DELIVERIES.c.id == delivery_id,
                        _DELIVERIES.c.status == Status.DELIVERED.value,
                    )
                    .values(status=receipt.status, updated_at=now)
                ).rowcount
                moved_to = receipt.status if moved else None
        if delivery_id is None:
            logger.warning(
                "receipt on channel %s names unknown reference %s (%s); recorded",
                channel,
                receipt.provider_ref,
                receipt.provider_status,
            )
        suppressed = False
        address = receipt.address or (found.address if found is not None else None)
        if receipt.permanent and address:
            suppressed = self.suppressions.add(
                channel,
                address,
                f"bounce {receipt.error_code}",
                detail=f"receipt for {receipt.provider_ref}",
            )
        return RecordedReceipt(delivery_id, moved_to, inserted is None, suppressed)
