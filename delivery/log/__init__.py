"""The delivery log: every delivery and every attempt. The source of truth; the broker is
only transport.

``tables`` (the schema Alembic creates), ``database`` (engines), ``migrate``, and the parts
of ``DeliveryLog``: ``store`` (the hot path: claims and attempts), ``records`` (read
models), ``sweep`` (what is due), ``periodic`` (whose turn it is to sweep) and ``admin``
(reject, reopen).
"""

from delivery.log.admin import DeliveryAdmin
from delivery.log.periodic import PeriodicJobs
from delivery.log.records import AttemptRecord, DeliveryReads, DeliveryRecord
from delivery.log.store import (
    AttemptResult,
    Claim,
    ClaimState,
    DeliveryStore,
    Finished,
)
from delivery.log.sweep import DeliverySweep
from delivery.log.tables import Outcome, Status


class DeliveryLog(DeliveryStore, DeliverySweep, PeriodicJobs, DeliveryAdmin, DeliveryReads):
    """The whole log, as the worker, the CLI and the API use it."""


__all__ = [
    "AttemptRecord",
    "AttemptResult",
    "Claim",
    "ClaimState",
    "DeliveryLog",
    "DeliveryRecord",
    "Finished",
    "Outcome",
    "Status",
]
