"""Erasure: one address, and what was sent to it, out of every table of the log.

``forms`` (which spellings of the address are looked for), ``eraser`` (what happens to each
table, in one transaction) and ``erase_address``, what the command line and the HTTP
service call. The keyed hash that keeps an erased address suppressed is
``delivery.recipients.address_hash``.
"""

from delivery.engine.assembly import Assembly
from delivery.erasure.eraser import Eraser, Erasure
from delivery.erasure.forms import AddressForms
from delivery.errors import DeliveryError
from delivery.recipients.address_hash import erasure_keys
from delivery.redaction import ERASED_ADDRESS

__all__ = ["ERASED_ADDRESS", "AddressForms", "Eraser", "Erasure", "canonical_forms", "erase"]


def canonical_forms(assembly: Assembly, address: str) -> list[str]:
    """``address`` as each channel's dispatcher writes it (E.164 for SMS), where one can
    reach it: what its suppression lists hold."""
    found = []
    for summary in assembly.channels.summaries():
        try:
            found.append(assembly.dispatchers.get(summary["name"])[1].validate_address(address))
        except (DeliveryError, ValueError):
            continue  # a channel that cannot reach it, or cannot be built here: no form
    return found


def erase(assembly: Assembly, address: str) -> Erasure:
    """Erase ``address`` from ``assembly``'s log.

    Raises:
        ValueError: not an address (empty, control characters, no letter or digit…).
        SecretKeyMissing: the address is suppressed and no key is set to keep it so.
    """
    forms = AddressForms.of(address, canonical_forms(assembly, address))
    return Eraser(assembly.log.engine, keys=erasure_keys(assembly.settings)).erase(forms)
