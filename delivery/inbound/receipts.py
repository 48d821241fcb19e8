"""``/receipts/CHANNEL``: providers' status callbacks, verified with the channel's own
credentials (Twilio: its auth token) and recorded against the delivery they name.

No API key: providers call this route. A receipt naming a reference no delivery has is
still answered 200 (and recorded, and logged), so a provider never retries it in a loop.
"""

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from delivery.errors import UnknownBackend, UnknownChannel
from delivery.inbound.base import InboundRequest
from delivery.inbound.receipt_log import read_receipt
from delivery.inbound.routes import PROVIDER_ANSWERS, answer, take
from delivery.inbound.wiring import Inbound

logger = logging.getLogger(__name__)


router = APIRouter(tags=["receipts"])


def _take(inbound: Inbound, channel_name: str, incoming: InboundRequest) -> JSONResponse:
    try:
        channel = inbound.assembly.channels.get(channel_name)
    except UnknownChannel:
        raise UnknownBackend("no channel of that name takes receipts") from None
    recorded = inbound.receipts.record(channel_name, read_receipt(channel, incoming))
    return JSONResponse({"recorded": True, "known": recorded.delivery_id is not None})


@router.post("/receipts/{channel}", responses=PROVIDER_ANSWERS)
async def provider_receipt(channel: str, request: Request) -> Response:
    """A provider's status callback about a message sent through ``channel``."""
    taken = await take(request, what=f"receipt for {channel}")
    if isinstance(taken, Response):
        return taken
    inbound, incoming = taken
    return await answer(lambda: _take(inbound, channel, incoming), what=f"receipt {channel}")
