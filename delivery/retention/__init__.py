"""Retention: deliveries in a final status go after ``DELIVERY_RETENTION_DAYS``, with every
row keyed to them, in small batches that never hold up sending; their counts stay
(``delivery.log.counts``). ``delivery db purge`` runs it by hand, and the workers once a day
(``daily``), taking turns through the log like the sweep.
"""

from delivery.retention.daily import PURGE_JOB, DailyPurge
from delivery.retention.purge import PurgeReport, Retention

__all__ = ["PURGE_JOB", "DailyPurge", "PurgeReport", "Retention"]
