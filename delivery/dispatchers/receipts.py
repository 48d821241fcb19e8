"""What a provider says about a message it accepted: a receipt, in the log's words.

Here, below the dispatchers, because both sides produce one: the receipts route reads it
from a status callback, and a dispatcher that can ask its provider (``lookup_receipt``)
returns one when a delivery has waited too long for its callback.
"""

from dataclasses import dataclass, field
from typing import Any

#: What a receipt means here: the handset or mailbox has it, the provider gave up after
#: accepting it, or neither yet.
CONFIRMED, BOUNCED, PENDING = "confirmed", "bounced", "pending"


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
