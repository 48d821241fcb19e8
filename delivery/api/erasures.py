"""``POST /v1/erasures``: an address, and what was sent to it, out of the log.

An erasure acts on the whole site (every key's deliveries to the address, its preferences,
its inbox), so it takes an admin key (``delivery keys add NAME --admin``); any other key
gets 403 and nothing is erased.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import AfterValidator, ConfigDict, Field

from delivery.api.auth import api_key, caller
from delivery.api.keys import Caller
from delivery.api.models import BODY_ERRORS, Problem
from delivery.api.state import State
from delivery.erasure import erase
from delivery.erasure.forms import AddressForms
from delivery.recipients.preferences import MAX_KEY
from schemas import Model

router = APIRouter(prefix="/v1", tags=["erasures"], dependencies=[Depends(api_key)])


def _address(value: str) -> str:
    AddressForms.of(value)  # ValueError: 422 naming `address`
    return value


class ErasureRequest(Model):
    """``POST /v1/erasures``: the address to erase."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    address: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_KEY,
            description="An email address (matched in any case), phone number, URL…",
        ),
        AfterValidator(_address),
    ]


class ErasureCounts(Model):
    """How many rows of each kind were erased."""

    deliveries: int = Field(description="Deliveries kept with address and content emptied.")
    unsent: int = Field(description="Of those, not yet sent: now `erased`, never sent.")
    attempts: int = Field(description="Attempts without their error text and details.")
    receipts: int = Field(description="Receipts without the provider's details.")
    inbox: int = Field(description="Inbound messages from the address, removed.")
    subscriptions: int = Field(description="Subscriptions of the address, removed.")
    event_deliveries: int = Field(description="Event outcomes, the address emptied.")
    events: int = Field(description="Events fanned out whose context named it, emptied.")
    digest_items: int = Field(description="Events waiting in its digests, removed.")
    preferences: int = Field(description="The address's preferences, removed (0 or 1).")
    throttle: int = Field(description="Per-recipient throttle counts, removed.")
    suppressions: int = Field(description="Suppressions kept by keyed hash: still suppressed.")
    early_receipts: int = Field(description="Receipts waiting for their delivery, removed.")


@router.post(
    "/erasures",
    response_model=ErasureCounts,
    responses={
        **BODY_ERRORS,
        403: {"model": Problem, "description": "the key is not an admin key; nothing erased"},
        503: {
            "model": Problem,
            "description": "the delivery log is unreachable, or the address is on a "
            "suppression list and no DELIVERY_SECRET_KEY is set to keep it there by keyed "
            "hash; nothing erased",
        },
    },
)
def create_erasure(
    request: ErasureRequest, state: State, who: Annotated[Caller, Depends(caller)]
) -> ErasureCounts:
    """Erase an address and what was sent to it from every table: deliveries keep their
    status with the address and content emptied, those not yet sent end `erased` and are
    never sent, its inbox, subscriptions and preferences go, and a suppressed address
    stays suppressed by keyed hash. 200 with the counts; erasing again is harmless (all
    zeros, or what came in since). Needs an admin key."""
    if not who.admin:
        raise HTTPException(403, "an erasure needs an admin key (delivery keys add NAME --admin)")
    return ErasureCounts.model_validate(erase(state.assembly, request.address).to_json())
